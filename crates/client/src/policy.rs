//! What the client may pay, checked before anything is paid.

use std::time::{SystemTime, UNIX_EPOCH};

use gate402_bolt11::Network;

use crate::{Budget, Offer, Prefer, SessionOffer};

/// Spending limits: per request here, over time in the [`Budget`].
#[derive(Debug, Clone)]
pub struct Policy {
    /// The most a request may cost, in satoshis.
    pub max_cost_sats: u64,
    /// The most routing fees a payment may take, in satoshis.
    pub max_fee_sats: u64,
    /// The wallet's network; invoices for another are refused.
    pub network: Network,
    /// Limits over time, overall and per domain.
    pub budget: Budget,
}

/// Why an offer is refused before paying. Each has its own exit code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The invoice has no amount (or an amount of zero).
    #[error("refused: the invoice has no amount")]
    NoAmount,
    /// Above the cap (`--max-cost`, or `max_cost_sats` in client.toml).
    #[error(
        "refused: the {} is {price_sats} sat, above the cap of {max_sats} sat (--max-cost, or max_cost_sats in client.toml)",
        if *.deposit { "deposit of a prepaid balance" } else { "price" }
    )]
    OverCap {
        /// Asked for.
        price_sats: u64,
        /// Allowed.
        max_sats: u64,
        /// Whether it is a balance's deposit (or top-up), not one
        /// request's price.
        deposit: bool,
    },
    /// Above what is left of the cap after the earlier hops of a followed
    /// redirect paid (`-L`: the hops of one request pay the cap in all).
    #[error(
        "refused: the price is {price_sats} sat, above the {left_sats} sat left of the cap of {cap_sats} sat (--max-cost, or max_cost_sats in client.toml) after {spent_sats} sat paid on earlier hops of this request"
    )]
    OverCapAfterHops {
        /// Asked for.
        price_sats: u64,
        /// What is left of the cap.
        left_sats: u64,
        /// The cap of the whole request.
        cap_sats: u64,
        /// Paid on earlier hops.
        spent_sats: u64,
    },
    /// On another network than the wallet's.
    #[error("refused: the invoice is for {invoice}, the wallet is on {wallet}")]
    WrongNetwork {
        /// The invoice's.
        invoice: Network,
        /// The wallet's.
        wallet: Network,
    },
    /// Already expired: the invoice, or the challenge that would be
    /// answered, whichever ends first.
    #[error("refused: {what} expired at {at}")]
    Expired {
        /// `the invoice`, `the Payment challenge`, `the L402 token
        /// (weather_valid_until)`.
        what: String,
        /// When, RFC 3339.
        at: String,
    },
    /// An expiry that does not read as a time: taken as expired, since
    /// the server may well take it so after the money is gone.
    #[error("refused: {what} says it expires at {text:?}, which is not a time; taken as expired")]
    UnreadableExpiry {
        /// Whose expiry, as for [`Refusal::Expired`].
        what: String,
        /// The text as sent.
        text: String,
    },
    /// Paying would exceed a budget of the client config.
    #[error("refused: {price_sats} sat would exceed the {budget} of {limit_sats} sat ({spent_sats} sat spent)")]
    OverBudget {
        /// Which budget, e.g. `per-day budget for api.example.com`.
        budget: String,
        /// Already spent (or in flight) in its window.
        spent_sats: u64,
        /// Asked for.
        price_sats: u64,
        /// Allowed in the window.
        limit_sats: u64,
    },
    /// A session would be opened, and the wallet cannot issue the
    /// amountless return invoice its refund is paid to.
    #[error("refused: the wallet cannot issue a return invoice for the session's refund ({reason}); without sessions the balance is bought through its L402 token, which is never refunded")]
    NoReturnInvoice {
        /// The wallet's words.
        reason: String,
    },
    /// The invoice's payment hash is one this client paid (or is paying)
    /// for another origin: a wallet asked to pay a hash twice answers
    /// with the first payment's outcome, its preimage, which this origin
    /// would then be shown without being paid.
    #[error("refused: the invoice's payment hash was paid for another origin ({origin}); a server offering it again is not owed that payment's preimage")]
    PaidForAnotherOrigin {
        /// The origin it was paid for.
        origin: String,
    },
    /// The invoice's payment hash is one this client paid (or is paying)
    /// for this origin already: it cannot be paid twice, and booking it
    /// again would count it twice against the budgets.
    #[error("refused: the invoice's payment hash was paid by this client before, for {url}; the server offered it again, and it is not paid or booked twice")]
    PaidBefore {
        /// The URL it was paid for.
        url: String,
    },
}

impl Refusal {
    /// The process exit code `gate402 get` uses for this refusal.
    pub fn exit_code(&self) -> u8 {
        match self {
            Refusal::OverCap { .. } | Refusal::OverCapAfterHops { .. } => 3,
            Refusal::NoAmount => 4,
            Refusal::WrongNetwork { .. } => 5,
            Refusal::Expired { .. } | Refusal::UnreadableExpiry { .. } => 6,
            Refusal::OverBudget { .. } => 8,
            Refusal::NoReturnInvoice { .. } => 10,
            Refusal::PaidForAnotherOrigin { .. } | Refusal::PaidBefore { .. } => 1,
        }
    }
}

impl Policy {
    /// Checks an offer, to be answered with `scheme`; `Ok` means it may be
    /// paid.
    pub fn check(&self, offer: &Offer, scheme: Prefer, now: SystemTime) -> Result<u64, Refusal> {
        let invoice = &offer.invoice;
        if invoice.network() != self.network {
            return Err(Refusal::WrongNetwork {
                invoice: invoice.network(),
                wallet: self.network,
            });
        }
        let amount_msat = amount_of(invoice)?;
        if let Some(expired) = expiry(offer, scheme, now) {
            return Err(expired);
        }
        let price_sats = amount_msat.div_ceil(1000);
        if price_sats > self.max_cost_sats {
            let deposit = offer
                .l402_sale()
                .is_some_and(|(sale, _)| sale == gate402_l402::caveat::Sale::Balance);
            return Err(Refusal::OverCap {
                price_sats,
                max_sats: self.max_cost_sats,
                deposit,
            });
        }
        Ok(amount_msat)
    }

    /// Checks a session's deposit (or top-up) before it is paid, as any
    /// payment is checked: the deposit is what is paid, so the cap applies
    /// to it, not to the unit price. `Ok` holds the amount, in
    /// millisatoshis.
    ///
    /// # Errors
    ///
    /// The [`Refusal`]: another network, no amount, the invoice or the
    /// challenge expired, the deposit above the cap.
    pub fn check_deposit(&self, offer: &SessionOffer, now: SystemTime) -> Result<u64, Refusal> {
        let invoice = &offer.invoice;
        if invoice.network() != self.network {
            return Err(Refusal::WrongNetwork {
                invoice: invoice.network(),
                wallet: self.network,
            });
        }
        let amount_msat = amount_of(invoice)?;
        let mut ends = vec![invoice_end(invoice)];
        if let Some(text) = offer.challenge.expires.as_deref() {
            let what = "the session challenge".to_owned();
            match gate402_mpp::parse_time(text) {
                Some(at) => ends.push((what, at.unix_timestamp())),
                None => {
                    return Err(Refusal::UnreadableExpiry {
                        what,
                        text: text.to_owned(),
                    })
                }
            }
        }
        if let Some(passed) = first_passed(ends, now) {
            return Err(passed);
        }
        let price_sats = amount_msat.div_ceil(1000);
        if price_sats > self.max_cost_sats {
            return Err(Refusal::OverCap {
                price_sats,
                max_sats: self.max_cost_sats,
                deposit: true,
            });
        }
        Ok(amount_msat)
    }
}

/// What `invoice` asks, in millisatoshis. Zero is no amount either:
/// nothing would be paid for the answer.
fn amount_of(invoice: &gate402_bolt11::Invoice) -> Result<u64, Refusal> {
    invoice
        .amount_msat()
        .filter(|msat| *msat > 0)
        .ok_or(Refusal::NoAmount)
}

/// Why `offer` can no longer be paid at `now` when answered with `scheme`:
/// the earliest of the invoice's expiry and the answered challenge's
/// (`expires` of a Payment challenge, draft-lightning-charge; the L402
/// token's `_valid_until`; the x402 offer's `extra.validUntil`), once it
/// has passed. An expiry that is not a
/// time counts as passed.
pub(crate) fn expiry(offer: &Offer, scheme: Prefer, now: SystemTime) -> Option<Refusal> {
    let mut ends = vec![invoice_end(&offer.invoice)];
    match scheme {
        Prefer::Mpp => {
            if let Some(text) = offer.payment.as_ref().and_then(|c| c.expires.as_deref()) {
                let what = "the Payment challenge".to_owned();
                match gate402_mpp::parse_time(text) {
                    Some(at) => ends.push((what, at.unix_timestamp())),
                    None => {
                        return Some(Refusal::UnreadableExpiry {
                            what,
                            text: text.to_owned(),
                        })
                    }
                }
            }
        }
        Prefer::X402 => {
            // 0: the offer names no end of its own (an x402 server that is
            // not gate402); the invoice's is the one.
            let valid_until = offer
                .x402
                .as_ref()
                .map(|x| x.requirements.extra.valid_until);
            if let Some(at) = valid_until.filter(|&at| at > 0) {
                ends.push((
                    "the x402 offer (validUntil)".to_owned(),
                    i64::try_from(at).unwrap_or(i64::MAX),
                ));
            }
        }
        Prefer::L402 => {
            for (condition, value) in offer.l402_valid_until() {
                let what = format!("the L402 token ({condition})");
                match value.parse::<i64>() {
                    Ok(at) => ends.push((what, at)),
                    Err(_) => return Some(Refusal::UnreadableExpiry { what, text: value }),
                }
            }
        }
    }
    first_passed(ends, now)
}

/// When `invoice` expires, as one of the ends [`first_passed`] compares:
/// an expiry past `i64::MAX` seconds is as good as never (cast, it read
/// as before 1970: a never-expiring invoice was refused as expired).
fn invoice_end(invoice: &gate402_bolt11::Invoice) -> (String, i64) {
    let at = i64::try_from(invoice.expires_at()).unwrap_or(i64::MAX);
    ("the invoice".to_owned(), at)
}

/// The earliest of `ends` (what ends, unix seconds), if it has passed at
/// `now`.
fn first_passed(ends: Vec<(String, i64)>, now: SystemTime) -> Option<Refusal> {
    let now = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let (what, at) = ends.into_iter().min_by_key(|(_, at)| *at)?;
    (at <= now).then(|| Refusal::Expired {
        what,
        at: time::OffsetDateTime::from_unix_timestamp(at)
            .map_or_else(|_| format!("{at} (unix)"), gate402_mpp::format_time),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{invoice, l402_challenge, payment_challenge};
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use gate402_l402::caveat::Caveat;

    fn policy() -> Policy {
        Policy {
            max_cost_sats: 10,
            max_fee_sats: 0,
            network: Network::Regtest,
            budget: Budget::default(),
        }
    }

    fn offer(invoice_expiry_secs: u64, expires: &str, valid_until: &str) -> Offer {
        let bolt11 = invoice([3; 32], invoice_expiry_secs);
        let header = format!(
            "{}, {}",
            l402_challenge(&bolt11, &[Caveat::new("read_valid_until", valid_until)]),
            payment_challenge(
                &bolt11,
                |b| URL_SAFE_NO_PAD.encode(b),
                &[("expires", expires)]
            )
        );
        Offer::from_challenges([header.as_str()]).unwrap()
    }

    #[test]
    fn an_invoice_of_zero_is_no_amount() {
        let bolt11 = crate::tests::invoice_of([5; 32], 0, 600);
        let offer = Offer::from_challenges([l402_challenge(&bolt11, &[]).as_str()]).unwrap();
        assert_eq!(
            policy().check(&offer, Prefer::L402, SystemTime::now()),
            Err(Refusal::NoAmount)
        );
    }

    /// An invoice whose expiry lies past `i64::MAX` seconds never expires:
    /// it read as expired before 1970 (exit 6, "expired at
    /// 1969-12-31T23:59:59Z").
    #[test]
    fn an_invoice_that_never_expires_is_not_expired() {
        let now = SystemTime::now();
        for expiry in [u64::MAX, i64::MAX as u64, 1 << 63] {
            let never = offer(expiry, "2099-01-01T00:00:00Z", "4000000000");
            assert_eq!(
                policy().check(&never, Prefer::L402, now),
                Ok(2_000),
                "{expiry}"
            );
            assert_eq!(
                policy().check(&never, Prefer::Mpp, now),
                Ok(2_000),
                "{expiry}"
            );
        }
    }

    #[test]
    fn the_earliest_expiry_of_what_is_answered_decides() {
        let now = SystemTime::now();
        let later = "4000000000";
        let live = offer(600, "2099-01-01T00:00:00Z", later);
        assert_eq!(policy().check(&live, Prefer::Mpp, now), Ok(2_000));
        assert_eq!(policy().check(&live, Prefer::L402, now), Ok(2_000));

        // The challenge ended long before its invoice: only MPP minds.
        let past = offer(600, "2020-01-01T00:00:00Z", later);
        assert_eq!(
            policy().check(&past, Prefer::Mpp, now),
            Err(Refusal::Expired {
                what: "the Payment challenge".into(),
                at: "2020-01-01T00:00:00Z".into()
            })
        );
        assert_eq!(policy().check(&past, Prefer::L402, now), Ok(2_000));

        // Unreadable is expired.
        let unreadable = offer(600, "tomorrow", later);
        let refused = policy().check(&unreadable, Prefer::Mpp, now).unwrap_err();
        assert_eq!(refused.exit_code(), 6);
        assert_eq!(
            refused.to_string(),
            "refused: the Payment challenge says it expires at \"tomorrow\", which is not a time; taken as expired"
        );

        // An L402 token already past its _valid_until buys nothing.
        let stale = offer(600, "2099-01-01T00:00:00Z", "1600000000");
        assert_eq!(
            policy().check(&stale, Prefer::L402, now),
            Err(Refusal::Expired {
                what: "the L402 token (read_valid_until)".into(),
                at: "2020-09-13T12:26:40Z".into()
            })
        );

        // The invoice ends first: it is the one named.
        let short = offer(1, "2099-01-01T00:00:00Z", later);
        let in_a_minute = now + std::time::Duration::from_secs(60);
        let refused = policy()
            .check(&short, Prefer::Mpp, in_a_minute)
            .unwrap_err();
        assert!(
            refused
                .to_string()
                .starts_with("refused: the invoice expired at"),
            "{refused}"
        );
    }
}
