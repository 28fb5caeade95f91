//! API keys: `ferry_<role>_<id>_<secret>`. The id (12 hex digits) finds the
//! row, the secret (64 hex digits, 256 random bits) proves possession. Only
//! BLAKE3 of the secret is stored: with 256 bits of entropy a slow password
//! hash buys nothing.

use std::fmt;

use thiserror::Error;

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyRole {
    /// Publishes and deploys releases for its tenant (ferry-agent).
    Agent,
    /// Asks the gateway about its tenant's releases (mobile and web apps).
    Client,
    /// Sees every tenant on the registry's dashboard (the vendor); belongs
    /// to no tenant.
    Admin,
    /// Sees its own tenant on the registry's dashboard (the tenant's
    /// administrators).
    Operator,
    /// Publishes and deploys releases for a set of tenants (the vendor's
    /// build pipeline, publishing per-tenant variants); belongs to none.
    Publisher,
}

impl KeyRole {
    pub const ALL: [KeyRole; 5] =
        [KeyRole::Agent, KeyRole::Client, KeyRole::Admin, KeyRole::Operator, KeyRole::Publisher];

    pub fn as_str(self) -> &'static str {
        match self {
            KeyRole::Agent => "agent",
            KeyRole::Client => "client",
            KeyRole::Admin => "admin",
            KeyRole::Operator => "operator",
            KeyRole::Publisher => "publisher",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "agent" => Some(KeyRole::Agent),
            "client" => Some(KeyRole::Client),
            "admin" => Some(KeyRole::Admin),
            "operator" => Some(KeyRole::Operator),
            "publisher" => Some(KeyRole::Publisher),
            _ => None,
        }
    }
}

impl fmt::Display for KeyRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A token that is not shaped like a Ferry key.
#[derive(Debug, Error)]
#[error("malformed api key (expected ferry_<role>_<id>_<secret>)")]
pub struct TokenError;

/// A parsed key: the secret is kept only as long as the check needs it.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub role: KeyRole,
    pub id: String,
    secret: String,
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKey").field("role", &self.role).field("id", &self.id).finish_non_exhaustive()
    }
}

const ID_HEX: usize = 12;
const SECRET_HEX: usize = 64;

impl ApiKey {
    /// A fresh random key.
    pub fn generate(role: KeyRole) -> Self {
        let mut id = [0u8; ID_HEX / 2];
        let mut secret = [0u8; SECRET_HEX / 2];
        getrandom::fill(&mut id).expect("operating system random source");
        getrandom::fill(&mut secret).expect("operating system random source");
        Self { role, id: hex::encode(id), secret: hex::encode(secret) }
    }

    pub fn parse(token: &str) -> Result<Self, TokenError> {
        let mut parts = token.trim().split('_');
        let (Some("ferry"), Some(role), Some(id), Some(secret), None) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError);
        };
        let role = KeyRole::parse(role).ok_or(TokenError)?;
        let hexy = |s: &str, n| s.len() == n && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !hexy(id, ID_HEX) || !hexy(secret, SECRET_HEX) {
            return Err(TokenError);
        }
        Ok(Self { role, id: id.to_owned(), secret: secret.to_owned() })
    }

    /// The whole token, to hand to its owner once.
    pub fn token(&self) -> String {
        format!("ferry_{}_{}_{}", self.role, self.id, self.secret)
    }

    /// What is stored to check the secret later.
    pub fn secret_hash(&self) -> [u8; 32] {
        *blake3::hash(self.secret.as_bytes()).as_bytes()
    }

    /// Constant-time check against a stored hash.
    pub fn matches(&self, stored: &[u8]) -> bool {
        <[u8; 32]>::try_from(stored).is_ok_and(|s| blake3::Hash::from_bytes(s) == blake3::hash(self.secret.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_parse_back_and_match_their_hash() {
        let key = ApiKey::generate(KeyRole::Agent);
        let parsed = ApiKey::parse(&key.token()).unwrap();
        assert_eq!(parsed, key);
        assert!(parsed.matches(&key.secret_hash()));
        assert!(!ApiKey::generate(KeyRole::Agent).matches(&key.secret_hash()));
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let good = ApiKey::generate(KeyRole::Client).token();
        for bad in
            ["", "Bearer x", "ferry_admin_0123456789ab_00", &good.replace("ferry_", "fery_"), &good[..good.len() - 1]]
        {
            assert!(ApiKey::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn debug_output_hides_the_secret() {
        let key = ApiKey::generate(KeyRole::Agent);
        assert!(!format!("{key:?}").contains(&key.secret));
    }

    proptest::proptest! {
        /// Any string: parsing never panics, and what it accepts is exactly
        /// a token it would print (so one key has one spelling), up to
        /// surrounding white space.
        #[test]
        fn parse_accepts_only_canonical_tokens(input in "\\PC{0,100}|ferry_(agent|client|admin)_[0-9a-fA-F_]{10,14}_[0-9a-f]{60,68}") {
            if let Ok(key) = ApiKey::parse(&input) {
                proptest::prop_assert_eq!(key.token(), input.trim());
            }
        }

        /// Mutating one character of a valid token never yields another
        /// key that matches the original's stored hash.
        #[test]
        fn a_mutated_token_does_not_match(pos in 0usize..90, c in proptest::char::range('0', 'z')) {
            let key = ApiKey::generate(KeyRole::Client);
            let mut token: Vec<char> = key.token().chars().collect();
            let pos = pos % token.len();
            if token[pos] != c {
                token[pos] = c;
                let mutated: String = token.into_iter().collect();
                if let Ok(other) = ApiKey::parse(&mutated) {
                    proptest::prop_assert!(other.id != key.id || !other.matches(&key.secret_hash()) || other.role != key.role);
                }
            }
        }
    }
}
