//! RFC 9457 problem details with the paymentauth.org problem types.

pub use mpp::PaymentErrorDetails as Problem;

/// The media type of a problem body.
pub const CONTENT_TYPE: &str = "application/problem+json";

const CORE_BASE: &str = "https://paymentauth.org/problems/";
const LIGHTNING_BASE: &str = "https://paymentauth.org/problems/lightning/";

/// Every problem type gate402 answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProblemType {
    /// No credential: pay one of the challenges.
    PaymentRequired,
    /// The credential is for a lower price than the route charges now.
    PaymentInsufficient,
    /// The challenge expired before the credential arrived.
    PaymentExpired,
    /// The credential is well formed but its proof does not hold.
    VerificationFailed,
    /// The credential cannot be read.
    MalformedCredential,
    /// The echoed challenge was not issued here, or not for this route.
    InvalidChallenge,
    /// A method or intent this server does not offer (status 400).
    MethodUnsupported,
    /// The request around the credential is malformed (status 400):
    /// two credentials, a credential field holding something else.
    BadRequest,
    /// The credential's payload is not what its method takes.
    InvalidPayload,
    /// The client has something to do first (pay the invoice it holds).
    PaymentActionRequired,
    /// The server could not process the payment for now (a store or node
    /// out of reach); retrying may help (status 500, with `Retry-After`).
    InternalPaymentError,
    /// Lightning: the payload is not a preimage.
    LightningMalformedCredential,
    /// Lightning: the challenge is not one this server knows.
    LightningUnknownChallenge,
    /// Lightning: the preimage does not hash to the payment hash.
    LightningInvalidPreimage,
    /// Lightning: the invoice expired.
    LightningExpiredInvoice,
    /// Lightning session: no session has this id.
    LightningSessionNotFound,
    /// Lightning session: the session is closed.
    LightningSessionClosed,
    /// Lightning session: the balance does not cover the request.
    LightningInsufficientBalance,
    /// Lightning session: the challenge has expired.
    LightningChallengeExpired,
    /// Lightning session: the return invoice is not an amountless BOLT11
    /// invoice on this network.
    LightningInvalidReturnInvoice,
}

impl ProblemType {
    /// The last segment of the type URI.
    pub fn code(self) -> &'static str {
        match self {
            ProblemType::PaymentRequired => "payment-required",
            ProblemType::PaymentInsufficient => "payment-insufficient",
            ProblemType::PaymentExpired => "payment-expired",
            ProblemType::VerificationFailed => "verification-failed",
            ProblemType::MalformedCredential | ProblemType::LightningMalformedCredential => {
                "malformed-credential"
            }
            ProblemType::InvalidChallenge => "invalid-challenge",
            ProblemType::MethodUnsupported => "method-unsupported",
            ProblemType::BadRequest => "bad-request",
            ProblemType::InvalidPayload => "invalid-payload",
            ProblemType::PaymentActionRequired => "payment-action-required",
            ProblemType::InternalPaymentError => "internal-payment-error",
            ProblemType::LightningUnknownChallenge => "unknown-challenge",
            ProblemType::LightningInvalidPreimage => "invalid-preimage",
            ProblemType::LightningExpiredInvoice => "expired-invoice",
            ProblemType::LightningSessionNotFound => "session-not-found",
            ProblemType::LightningSessionClosed => "session-closed",
            ProblemType::LightningInsufficientBalance => "insufficient-balance",
            ProblemType::LightningChallengeExpired => "challenge-expired",
            ProblemType::LightningInvalidReturnInvoice => "invalid-return-invoice",
        }
    }

    /// The full type URI.
    pub fn uri(self) -> String {
        let base = if self.is_lightning() {
            LIGHTNING_BASE
        } else {
            CORE_BASE
        };
        format!("{base}{}", self.code())
    }

    fn is_lightning(self) -> bool {
        matches!(
            self,
            ProblemType::LightningMalformedCredential
                | ProblemType::LightningUnknownChallenge
                | ProblemType::LightningInvalidPreimage
                | ProblemType::LightningExpiredInvoice
                | ProblemType::LightningSessionNotFound
                | ProblemType::LightningSessionClosed
                | ProblemType::LightningInsufficientBalance
                | ProblemType::LightningChallengeExpired
                | ProblemType::LightningInvalidReturnInvoice
        )
    }

    /// A short human title.
    pub fn title(self) -> &'static str {
        match self {
            ProblemType::PaymentRequired => "Payment Required",
            ProblemType::PaymentInsufficient => "Payment Insufficient",
            ProblemType::PaymentExpired => "Payment Expired",
            ProblemType::VerificationFailed => "Verification Failed",
            ProblemType::MalformedCredential | ProblemType::LightningMalformedCredential => {
                "Malformed Credential"
            }
            ProblemType::InvalidChallenge => "Invalid Challenge",
            ProblemType::MethodUnsupported => "Method Unsupported",
            ProblemType::BadRequest => "Bad Request",
            ProblemType::InvalidPayload => "Invalid Payload",
            ProblemType::PaymentActionRequired => "Payment Action Required",
            ProblemType::InternalPaymentError => "Internal Payment Error",
            ProblemType::LightningUnknownChallenge => "Unknown Challenge",
            ProblemType::LightningInvalidPreimage => "Invalid Preimage",
            ProblemType::LightningExpiredInvoice => "Expired Invoice",
            ProblemType::LightningSessionNotFound => "Session Not Found",
            ProblemType::LightningSessionClosed => "Session Closed",
            ProblemType::LightningInsufficientBalance => "Insufficient Balance",
            ProblemType::LightningChallengeExpired => "Challenge Expired",
            ProblemType::LightningInvalidReturnInvoice => "Invalid Return Invoice",
        }
    }

    /// The HTTP status (draft-httpauth-payment-01): 400 for an unsupported
    /// method or a malformed request, 500 for a payment that could not be
    /// processed now, 402 (with a fresh challenge) for everything else.
    pub fn status(self) -> u16 {
        match self {
            ProblemType::MethodUnsupported | ProblemType::BadRequest => 400,
            ProblemType::InternalPaymentError => 500,
            _ => 402,
        }
    }

    /// A problem body of this type.
    pub fn problem(self, detail: impl Into<String>) -> Problem {
        Problem {
            problem_type: self.uri(),
            title: self.title().to_owned(),
            status: self.status(),
            detail: detail.into(),
            challenge_id: None,
            hint: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_and_statuses() {
        assert_eq!(
            ProblemType::PaymentRequired.uri(),
            "https://paymentauth.org/problems/payment-required"
        );
        assert_eq!(
            ProblemType::LightningInvalidPreimage.uri(),
            "https://paymentauth.org/problems/lightning/invalid-preimage"
        );
        assert_eq!(ProblemType::MethodUnsupported.status(), 400);
        let body = serde_json::to_value(ProblemType::PaymentExpired.problem("late")).unwrap();
        assert_eq!(
            body["type"],
            "https://paymentauth.org/problems/payment-expired"
        );
        assert_eq!(body["status"], 402);
        assert_eq!(body["detail"], "late");
    }
}
