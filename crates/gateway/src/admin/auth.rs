//! Who is calling the admin API: a named bearer secret, or the dashboard's
//! cookie, got from a short-lived login link.
//!
//! Links and cookies are `<claims>.<tag>` in base64url, the tag an
//! HMAC-SHA256 over the claims (`kind:name:expires`, and for a link a
//! random nonce after them, so that each link is its own) and the named
//! credential's secret, under a key derived from the data dir's admin
//! secret: nothing to store, and they die with their time, with the data
//! dir's secret, or when their credential is removed or given another
//! secret (a leaked secret, replaced, takes the dashboards opened with it
//! along).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::config::AdminCredential;

/// The name of the credential kept in the data dir.
pub const LOCAL_ADMIN: &str = "local";

/// Seconds a login link stays usable.
pub const LOGIN_LINK_SECS: u64 = 120;

/// Seconds a dashboard cookie stays valid.
pub const COOKIE_SECS: u64 = 12 * 3600;

/// The dashboard's cookie.
pub const COOKIE_NAME: &str = "gate402_admin";

/// The admin credentials and the key of links and cookies.
pub struct Credentials {
    named: Vec<AdminCredential>,
    key: [u8; 32],
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field(
                "names",
                &self.named.iter().map(|c| &c.name).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Login,
    Session,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Login => "login",
            Kind::Session => "session",
        }
    }
}

type HmacSha256 = hmac::Hmac<Sha256>;

impl Credentials {
    /// The data dir's secret (named [`LOCAL_ADMIN`]) and the configured
    /// ones.
    pub fn new(local_secret: &str, configured: &[AdminCredential]) -> Self {
        let mut named = vec![AdminCredential {
            name: LOCAL_ADMIN.into(),
            secret: local_secret.into(),
        }];
        named.extend(configured.iter().cloned());
        let mut mac =
            HmacSha256::new_from_slice(local_secret.as_bytes()).expect("HMAC takes any key length");
        mac.update(b"gate402 admin links and cookies");
        Self {
            named,
            key: mac.finalize().into_bytes().into(),
        }
    }

    /// These credentials with `configured` in place of the configured
    /// ones: the data dir's (`local`) and the key of links and cookies
    /// stay.
    pub fn with_configured(&self, configured: &[AdminCredential]) -> Self {
        let mut named = vec![self.named[0].clone()];
        named.extend(configured.iter().cloned());
        Self {
            named,
            key: self.key,
        }
    }

    /// The name of the credential whose secret is `secret`. Every secret
    /// is compared in constant time.
    pub fn bearer(&self, secret: &str) -> Option<&str> {
        let mut found = None;
        for credential in &self.named {
            if bool::from(credential.secret.as_bytes().ct_eq(secret.as_bytes())) {
                found = Some(credential.name.as_str());
            }
        }
        found
    }

    /// A login link's code for `name`, usable until `now` +
    /// [`LOGIN_LINK_SECS`].
    pub fn login_code(&self, name: &str, now: u64) -> String {
        self.sign(Kind::Login, name, now + LOGIN_LINK_SECS)
    }

    /// The name a login code was made for, while it is valid. Not for
    /// handlers: [`Redeemed::redeem`] also spends the link.
    fn redeem_login(&self, code: &str, now: u64) -> Option<String> {
        self.open(Kind::Login, code, now)
    }

    /// A dashboard cookie's value for `name`, valid [`COOKIE_SECS`].
    pub fn cookie_for(&self, name: &str, now: u64) -> String {
        self.sign(Kind::Session, name, now + COOKIE_SECS)
    }

    /// The name a cookie was made for, while it is valid.
    pub fn cookie(&self, value: &str, now: u64) -> Option<String> {
        self.open(Kind::Session, value, now)
    }

    /// The secret of the credential named `name`.
    fn secret_of(&self, name: &str) -> Option<&str> {
        self.named
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.secret.as_str())
    }

    fn tag(&self, claims: &str, secret: &str) -> [u8; 32] {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key length");
        // Length-prefixed, so that no claims and secret run into another
        // pair's.
        mac.update(&(claims.len() as u64).to_be_bytes());
        mac.update(claims.as_bytes());
        mac.update(secret.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// A link or cookie for `name`; one for a name that is not (or no
    /// longer) a credential's never opens.
    fn sign(&self, kind: Kind, name: &str, expires: u64) -> String {
        let mut claims = format!("{}:{name}:{expires}", kind.as_str());
        if kind == Kind::Login {
            // Links are spent on use: two made in the same second must not
            // be one link.
            claims.push(':');
            claims.push_str(&hex::encode(rand::random::<[u8; 12]>()));
        }
        let tag = match self.secret_of(name) {
            Some(secret) => self.tag(&claims, secret),
            None => [0; 32],
        };
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(&claims),
            URL_SAFE_NO_PAD.encode(tag)
        )
    }

    fn open(&self, kind: Kind, token: &str, now: u64) -> Option<String> {
        let (claims, tag) = token.split_once('.')?;
        let claims = String::from_utf8(URL_SAFE_NO_PAD.decode(claims).ok()?).ok()?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        // A name may hold colons; the kind and the time cannot.
        let (k, rest) = claims.split_once(':')?;
        let rest = if k == Kind::Login.as_str() {
            rest.rsplit_once(':')?.0
        } else {
            rest
        };
        let (name, expires) = rest.rsplit_once(':')?;
        // A credential removed, or given another secret, takes its links
        // and cookies with it.
        let secret = self.secret_of(name)?;
        if !bool::from(self.tag(&claims, secret).as_slice().ct_eq(&tag)) {
            return None;
        }
        let live = k == kind.as_str() && expires.parse::<u64>().ok()? > now;
        live.then(|| name.to_owned())
    }
}

/// Login codes traded for a cookie, until they expire: a link opens one
/// dashboard, once (on the replica that served it; links are made on the
/// replica whose admin listener answered).
#[derive(Debug, Default)]
pub struct Redeemed(std::sync::Mutex<std::collections::HashMap<String, u64>>);

impl Redeemed {
    /// The name a login `code` opens, if it is valid under `credentials`
    /// and used for the first time (it is then marked used). Only valid
    /// codes are remembered: anyone can send a code, and a made-up one
    /// must cost no memory.
    pub fn redeem(&self, credentials: &Credentials, code: &str, now: u64) -> Option<String> {
        let name = credentials.redeem_login(code, now)?;
        let mut used = self.0.lock().unwrap_or_else(|e| e.into_inner());
        used.retain(|_, at| *at + LOGIN_LINK_SECS >= now);
        used.insert(code.to_owned(), now).is_none().then_some(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credentials() -> Credentials {
        Credentials::new(
            &"a".repeat(64),
            &[AdminCredential {
                name: "ops".into(),
                secret: "b".repeat(40),
            }],
        )
    }

    #[test]
    fn bearers_are_named() {
        let c = credentials();
        assert_eq!(c.bearer(&"a".repeat(64)), Some(LOCAL_ADMIN));
        assert_eq!(c.bearer(&"b".repeat(40)), Some("ops"));
        assert_eq!(c.bearer(&"b".repeat(39)), None);
        assert_eq!(c.bearer(""), None);
    }

    #[test]
    fn links_and_cookies_expire_and_do_not_stand_in_for_each_other() {
        let c = credentials();
        let code = c.login_code("ops", 1_000);
        assert_eq!(c.redeem_login(&code, 1_000).as_deref(), Some("ops"));
        assert_eq!(c.redeem_login(&code, 1_000 + LOGIN_LINK_SECS), None);
        assert_eq!(c.cookie(&code, 1_000), None, "a link is not a cookie");
        let cookie = c.cookie_for("ops", 1_000);
        assert_eq!(c.cookie(&cookie, 1_001).as_deref(), Some("ops"));
        assert_eq!(c.redeem_login(&cookie, 1_001), None);
        assert_eq!(c.cookie(&cookie, 1_000 + COOKIE_SECS), None);
        // Another key (another data dir) signs other cookies.
        let other = Credentials::new(&"c".repeat(64), &[]);
        assert_eq!(other.cookie(&cookie, 1_001), None);
        // A forged name or time breaks the tag.
        let (_, tag) = cookie.split_once('.').unwrap();
        let forged = format!(
            "{}.{tag}",
            URL_SAFE_NO_PAD.encode(format!("session:ops:{}", u64::MAX))
        );
        assert_eq!(c.cookie(&forged, 1_001), None);
        assert_eq!(c.cookie("garbage", 1_001), None);
    }

    #[test]
    fn a_credential_replaced_or_removed_takes_its_links_and_cookies_along() {
        let c = credentials();
        let cookie = c.cookie_for("ops", 1_000);
        let code = c.login_code("ops", 1_000);
        let local = c.cookie_for(LOCAL_ADMIN, 1_000);
        // The same data dir, "ops" with a new secret (the old one leaked).
        let rotated = Credentials::new(
            &"a".repeat(64),
            &[AdminCredential {
                name: "ops".into(),
                secret: "d".repeat(40),
            }],
        );
        assert_eq!(rotated.cookie(&cookie, 1_001), None);
        assert_eq!(rotated.redeem_login(&code, 1_001), None);
        assert_eq!(rotated.cookie(&local, 1_001).as_deref(), Some(LOCAL_ADMIN));
        let fresh = rotated.cookie_for("ops", 1_001);
        assert_eq!(rotated.cookie(&fresh, 1_002).as_deref(), Some("ops"));
        // "ops" gone: nothing made for it opens, nor can be made.
        let removed = Credentials::new(&"a".repeat(64), &[]);
        assert_eq!(removed.cookie(&cookie, 1_001), None);
        assert_eq!(removed.cookie(&fresh, 1_002), None);
        let orphan = removed.cookie_for("ops", 1_002);
        assert_eq!(removed.cookie(&orphan, 1_003), None);
    }

    #[test]
    fn each_link_opens_once_and_made_up_codes_are_not_kept() {
        let c = credentials();
        let redeemed = Redeemed::default();
        let (first, second) = (c.login_code("ops", 1_000), c.login_code("ops", 1_000));
        assert_ne!(first, second, "two links made in one second are two links");
        assert_eq!(redeemed.redeem(&c, &first, 1_001).as_deref(), Some("ops"));
        assert_eq!(redeemed.redeem(&c, &first, 1_002), None, "spent");
        assert_eq!(redeemed.redeem(&c, &second, 1_002).as_deref(), Some("ops"));
        for i in 0..1_000 {
            assert_eq!(redeemed.redeem(&c, &format!("made-up-{i}.x"), 1_003), None);
        }
        let cookie = c.cookie_for("ops", 1_000);
        assert_eq!(redeemed.redeem(&c, &cookie, 1_003), None);
        assert_eq!(
            redeemed.0.lock().unwrap().len(),
            2,
            "only the two links are kept"
        );
    }

    #[test]
    fn a_name_with_colons_opens_its_dashboard() {
        let c = Credentials::new(
            &"a".repeat(64),
            &[AdminCredential {
                name: "ops:eu:1".into(),
                secret: "b".repeat(40),
            }],
        );
        let code = c.login_code("ops:eu:1", 1_000);
        assert_eq!(c.redeem_login(&code, 1_001).as_deref(), Some("ops:eu:1"));
        let cookie = c.cookie_for("ops:eu:1", 1_000);
        assert_eq!(c.cookie(&cookie, 1_001).as_deref(), Some("ops:eu:1"));
    }
}
