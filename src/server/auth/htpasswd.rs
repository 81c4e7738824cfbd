//! `auth.htpasswd`: Basic credentials checked against an htpasswd file of bcrypt entries.
//!
//! - Only bcrypt (`$2y$`, `$2b$`, `$2a$`): other schemes (`{SHA}`, `$apr1$` MD5, crypt,
//!   plain text) are weak, and a file holding one is refused naming the file and the line.
//! - A line is `user:hash`, split at its first colon (a user name has none; a password may).
//! - The file is re-read when it changes (checked about once a second): a user added works
//!   within a few seconds. A file that no longer parses is logged and the last good table stays.
//! - A failed login costs what a successful one costs: an unknown user is checked against a
//!   dummy hash of the file's cost, so the time of an answer does not tell which users exist.
//!   Each check is one bcrypt verification on the blocking pool.
//! - Successful checks are remembered for a while (keyed by a SHA-256 of the user, the password
//!   and the entry), so a push of many requests pays bcrypt once; failures are never
//!   remembered, and a changed entry is a new key.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use axum::http::{HeaderMap, HeaderValue, header};
use base64::Engine as _;
use moka::future::Cache;
use sha2::{Digest as _, Sha256};

use super::scope::Scope;
use super::{Authorizer, Decision, quoted};

/// How often the file's modification time and size are compared with the loaded ones.
const RELOAD_CHECK: Duration = Duration::from_secs(1);
/// How long a successful check is remembered, and how many are.
const VERIFIED_TTL: Duration = Duration::from_secs(300);
const VERIFIED_CAPACITY: u64 = 1024;
/// Longer `Authorization` values are refused unread (a Basic value of a 255-byte user and a
/// 1 KiB password is under 2 KiB).
const MAX_AUTHORIZATION: usize = 8 * 1024;

/// The prefixes of the bcrypt variants accepted (`$2x$`, the buggy one, is not).
const BCRYPT_PREFIXES: [&str; 3] = ["$2a$", "$2b$", "$2y$"];

/// The users of one version of the file.
#[derive(Debug)]
pub struct Table {
    users: HashMap<String, String>,
    /// A hash of a random password at the cost most entries use: what an unknown user's
    /// password is checked against.
    dummy: String,
    stamp: Option<Stamp>,
}

/// What tells one version of the file from the next without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

impl Stamp {
    fn of(path: &Path) -> std::io::Result<Self> {
        let meta = std::fs::metadata(path)?;
        Ok(Self {
            modified: meta.modified().ok(),
            len: meta.len(),
            inode: std::os::unix::fs::MetadataExt::ino(&meta),
        })
    }
}

impl Table {
    /// Parses an htpasswd file's text; errors name `file` and the line.
    pub fn parse(file: &Path, text: &str) -> Result<Self, String> {
        let mut users: HashMap<String, String> = HashMap::new();
        let mut lines_of: HashMap<String, usize> = HashMap::new();
        let mut costs: HashMap<u32, usize> = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = |why: &str| format!("{}: line {n}: {why}", file.display());
            let Some((user, hash)) = line.split_once(':') else {
                return Err(at("expected user:bcrypt-hash"));
            };
            if user.is_empty() {
                return Err(at("empty user name"));
            }
            let scheme = if hash.starts_with("{SHA}") {
                Some("SHA-1 ({SHA})")
            } else if hash.starts_with("$apr1$") || hash.starts_with("$1$") {
                Some("MD5 ($apr1$)")
            } else if !hash.starts_with('$') {
                Some("crypt or plain text")
            } else {
                None
            };
            if let Some(scheme) = scheme {
                return Err(at(&format!(
                    "{scheme} entries are not accepted, only bcrypt ($2y$, $2b$, $2a$): \
                     recreate the entry with `htpasswd -B`"
                )));
            }
            if !BCRYPT_PREFIXES.iter().any(|p| hash.starts_with(p)) {
                return Err(at(
                    "only bcrypt entries ($2y$, $2b$, $2a$) are accepted: recreate the entry \
                     with `htpasswd -B`",
                ));
            }
            let parts: bcrypt::HashParts = hash
                .parse()
                .map_err(|e| at(&format!("not a valid bcrypt hash ({e})")))?;
            if let Some(first) = lines_of.insert(user.to_owned(), n) {
                return Err(at(&format!(
                    "user {user} is already defined on line {first}: keep one entry per user"
                )));
            }
            *costs.entry(parts.get_cost()).or_default() += 1;
            users.insert(user.to_owned(), hash.to_owned());
        }
        // The most common cost (the highest of equals); the default for an empty file.
        let cost = costs
            .iter()
            .max_by_key(|(cost, count)| (**count, **cost))
            .map_or(bcrypt::DEFAULT_COST, |(cost, _)| *cost);
        let secret: [u8; 32] = rand::random();
        let dummy = bcrypt::hash(secret, cost).map_err(|e| format!("bcrypt: {e}"))?;
        Ok(Self {
            users,
            dummy,
            stamp: None,
        })
    }

    /// Reads and parses the file.
    pub fn load(path: &Path) -> Result<Self, String> {
        let stamp = Stamp::of(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let mut table = Self::parse(path, &text)?;
        table.stamp = Some(stamp);
        Ok(table)
    }

    /// How many users the file has.
    pub fn users(&self) -> usize {
        self.users.len()
    }

    /// The hash a login by `user` is checked against: the user's entry, or the dummy of the
    /// same cost for an unknown user; and whether the user is known.
    fn hash_for(&self, user: &str) -> (&str, bool) {
        match self.users.get(user) {
            Some(hash) => (hash, true),
            None => (&self.dummy, false),
        }
    }
}

/// The outcome of one check: exactly one bcrypt verification, whatever the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verification {
    pub ok: bool,
    /// The cost of the hash that was verified (the work done).
    pub cost: u32,
}

/// Checks a login: one bcrypt verification against the user's entry, or against the dummy
/// hash for an unknown user, so that both cost the same. Runs bcrypt: call it on the
/// blocking pool.
pub fn verify(table: &Table, user: &str, password: &[u8]) -> Verification {
    let (hash, known) = table.hash_for(user);
    let matches = bcrypt::verify(password, hash).unwrap_or(false);
    let cost = hash
        .parse::<bcrypt::HashParts>()
        .map_or(0, |p| p.get_cost());
    Verification {
        ok: matches && known,
        cost,
    }
}

/// The `auth.htpasswd` authorizer: any user in the file has every access.
pub struct Htpasswd {
    challenge: HeaderValue,
    path: PathBuf,
    table: RwLock<Arc<Table>>,
    verified: Cache<[u8; 32], ()>,
}

impl std::fmt::Debug for Htpasswd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Htpasswd")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Htpasswd {
    /// Loads the file (an error if it cannot be read or holds anything but bcrypt entries)
    /// and starts watching it for changes, for as long as the authorizer lives.
    pub async fn open(realm: &str, path: &Path) -> Result<Arc<Self>, String> {
        let challenge = HeaderValue::from_str(&format!("Basic realm={}", quoted(realm)))
            .map_err(|_| format!("auth.htpasswd.realm: {realm:?} cannot be sent in a header"))?;
        let owned = path.to_owned();
        let table = tokio::task::spawn_blocking(move || Table::load(&owned))
            .await
            .map_err(|e| e.to_string())??;
        tracing::info!(
            path = %path.display(),
            users = table.users.len(),
            "htpasswd loaded"
        );
        let this = Arc::new(Self {
            challenge,
            path: path.to_owned(),
            table: RwLock::new(Arc::new(table)),
            verified: Cache::builder()
                .max_capacity(VERIFIED_CAPACITY)
                .time_to_live(VERIFIED_TTL)
                .build(),
        });
        tokio::spawn(watch(Arc::downgrade(&this)));
        Ok(this)
    }

    fn table(&self) -> Arc<Table> {
        Arc::clone(&self.table.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Re-reads the file if its stamp changed. A file that does not parse is logged and the
    /// current table stays (its stamp is remembered, so the error is logged once per change).
    async fn reload_if_changed(&self) {
        let current = self.table();
        let path = self.path.clone();
        let Ok(Ok(stamp)) = tokio::task::spawn_blocking(move || Stamp::of(&path)).await else {
            return;
        };
        if current.stamp == Some(stamp) {
            return;
        }
        let path = self.path.clone();
        let loaded = tokio::task::spawn_blocking(move || Table::load(&path)).await;
        let mut slot = self.table.write().unwrap_or_else(|p| p.into_inner());
        match loaded {
            Ok(Ok(table)) => {
                tracing::info!(
                    path = %self.path.display(),
                    users = table.users.len(),
                    "htpasswd reloaded"
                );
                *slot = Arc::new(table);
            }
            Ok(Err(error)) => {
                tracing::error!(%error, "htpasswd changed but cannot be used: keeping the users it had");
                let kept = Table {
                    users: current.users.clone(),
                    dummy: current.dummy.clone(),
                    stamp: Some(stamp),
                };
                *slot = Arc::new(kept);
            }
            Err(error) => tracing::error!(%error, "htpasswd reload failed"),
        }
    }

    /// Whether `user` and `password` log in.
    async fn check(&self, user: &str, password: &[u8]) -> bool {
        let table = self.table();
        let (hash, known) = table.hash_for(user);
        let key = remembered_key(user, password, hash);
        if known && self.verified.contains_key(&key) {
            return true;
        }
        let (user, password) = (user.to_owned(), password.to_vec());
        let checked =
            tokio::task::spawn_blocking(move || verify(&table, &user, &password).ok).await;
        let ok = checked.unwrap_or(false);
        if ok {
            self.verified.insert(key, ()).await;
        }
        ok
    }

    fn challenge(&self, message: &str) -> Decision {
        Decision::Challenge {
            challenge: self.challenge.clone(),
            message: message.to_owned(),
        }
    }
}

/// Polls the file every [`RELOAD_CHECK`] until the authorizer is dropped.
async fn watch(htpasswd: Weak<Htpasswd>) {
    let mut tick = tokio::time::interval(RELOAD_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(htpasswd) = htpasswd.upgrade() else {
            return;
        };
        htpasswd.reload_if_changed().await;
    }
}

fn remembered_key(user: &str, password: &[u8], hash: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in [user.as_bytes(), password, hash.as_bytes()] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    h.finalize().into()
}

/// The user and password of an `Authorization: Basic …` header; `Err` with the reason when
/// the header is missing or cannot be read.
pub fn basic_credentials(headers: &HeaderMap) -> Result<(String, Vec<u8>), &'static str> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or("authentication required")?;
    if value.len() > MAX_AUTHORIZATION {
        return Err("the Authorization header is too long");
    }
    let value = value
        .to_str()
        .map_err(|_| "the Authorization header is not text")?;
    let (scheme, encoded) = value
        .trim()
        .split_once(' ')
        .ok_or("the Authorization header is not Basic credentials")?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err("Basic credentials are required");
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| "the Basic credentials are not base64")?;
    let colon = decoded
        .iter()
        .position(|&b| b == b':')
        .ok_or("the Basic credentials have no colon between user and password")?;
    let user = std::str::from_utf8(&decoded[..colon])
        .map_err(|_| "the user name is not UTF-8")?
        .to_owned();
    Ok((user, decoded[colon + 1..].to_vec()))
}

#[async_trait]
impl Authorizer for Htpasswd {
    async fn authorize(&self, headers: &HeaderMap, _access: &[Scope]) -> Decision {
        let (user, password) = match basic_credentials(headers) {
            Ok(credentials) => credentials,
            Err(why) => return self.challenge(why),
        };
        if self.check(&user, &password).await {
            Decision::Allow { user }
        } else {
            self.challenge("invalid user name or password")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COST: u32 = 4;

    fn entry(user: &str, password: &str) -> String {
        format!("{user}:{}", bcrypt::hash(password, COST).unwrap())
    }

    fn parse(text: &str) -> Result<Table, String> {
        Table::parse(Path::new("/etc/registry/htpasswd"), text)
    }

    fn basic(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        headers
    }

    fn encoded(credentials: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(credentials)
        )
    }

    #[test]
    fn bcrypt_2a_2b_and_2y_entries_all_verify() {
        for version in [
            bcrypt::Version::TwoA,
            bcrypt::Version::TwoB,
            bcrypt::Version::TwoY,
        ] {
            let hash = bcrypt::hash_with_result("s3cret", COST)
                .unwrap()
                .format_for_version(version.clone());
            let table = parse(&format!("alice:{hash}\n")).unwrap();
            assert!(verify(&table, "alice", b"s3cret").ok, "{version}");
            assert!(!verify(&table, "alice", b"wrong").ok, "{version}");
        }
    }

    #[test]
    fn a_password_may_contain_colons() {
        let table = parse(&entry("alice", "a:b::c")).unwrap();
        assert!(verify(&table, "alice", b"a:b::c").ok);
        let (user, password) = basic_credentials(&basic(&encoded("alice:a:b::c"))).unwrap();
        assert_eq!(
            (user.as_str(), password.as_slice()),
            ("alice", &b"a:b::c"[..])
        );
    }

    #[test]
    fn non_bcrypt_entries_are_refused_naming_the_file_and_line() {
        let good = entry("alice", "pw");
        for bad in [
            "bob:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=",
            "bob:$apr1$r31.....$HqJZimcKQFAMYayBlzkrA/",
            "bob:rqXexS6ZhobKA",
            "bob:plaintext",
            "bob:$2x$04$abcdefghijklmnopqrstuuF0ZbRHhYv7.nG1LHDdSEBaXq1/G5Yq",
            "bob:$2y$04$tooshort",
            "just-a-name",
            ":$2y$04$abcdefghijklmnopqrstuuF0ZbRHhYv7.nG1LHDdSEBaXq1/G5Yq",
        ] {
            let e = parse(&format!("# users\n{good}\n\n{bad}\n")).unwrap_err();
            assert!(
                e.starts_with("/etc/registry/htpasswd: line 4: "),
                "{bad}: {e}"
            );
            assert!(!e.contains("W6ph5Mm5"), "no hash is repeated: {e}");
        }
    }

    #[test]
    fn a_user_defined_twice_is_refused() {
        let text = format!("{}\n{}\n", entry("alice", "a"), entry("alice", "b"));
        let e = parse(&text).unwrap_err();
        assert!(
            e.contains("line 2: user alice is already defined on line 1"),
            "{e}"
        );
    }

    #[test]
    fn comments_blank_lines_and_surrounding_space_are_skipped() {
        let table = parse(&format!("\n# a comment\n  {}  \n", entry("alice", "pw"))).unwrap();
        assert!(verify(&table, "alice", b"pw").ok);
    }

    /// The timing property, by structure: a wrong password and an unknown user each run one
    /// bcrypt verification of the same cost as a right password does.
    #[test]
    fn an_unknown_user_and_a_wrong_password_cost_one_verification_of_the_files_cost() {
        let table = parse(&format!(
            "{}\n{}\n",
            entry("alice", "pw"),
            entry("bob", "pw")
        ))
        .unwrap();
        let right = verify(&table, "alice", b"pw");
        let wrong = verify(&table, "alice", b"nope");
        let unknown = verify(&table, "mallory", b"pw");
        assert_eq!(
            right,
            Verification {
                ok: true,
                cost: COST
            }
        );
        assert_eq!(
            wrong,
            Verification {
                ok: false,
                cost: COST
            }
        );
        assert_eq!(
            unknown,
            Verification {
                ok: false,
                cost: COST
            }
        );
    }

    #[test]
    fn the_dummy_hash_verifies_no_password() {
        let table = parse(&entry("alice", "pw")).unwrap();
        for password in ["", "pw", "password"] {
            assert!(!verify(&table, "nobody", password.as_bytes()).ok);
        }
        assert!(!verify(&table, "", b"").ok);
    }

    #[test]
    fn malformed_authorization_headers_are_reasons_not_panics() {
        let too_long = format!("Basic {}", "A".repeat(MAX_AUTHORIZATION));
        for (value, why) in [
            ("Basic !!!not-base64!!!", "not base64"),
            (&encoded("no-colon-here")[..], "no colon"),
            ("Bearer abc.def.ghi", "Basic credentials are required"),
            ("Basic", "not Basic credentials"),
            (&too_long[..], "too long"),
            (&encoded("\u{ff}\u{fe}:pw")[..], ""),
        ] {
            let result = basic_credentials(&basic(value));
            if why.is_empty() {
                continue; // valid UTF-8 after all (ÿþ): only must not panic
            }
            let e = result.unwrap_err();
            assert!(e.contains(why), "{value:.40}: {e}");
        }
        assert_eq!(
            basic_credentials(&HeaderMap::new()).unwrap_err(),
            "authentication required"
        );
        let raw = {
            let mut h = HeaderMap::new();
            let bytes = [b"Basic "[..].to_vec(), vec![0xff, 0xfe]].concat();
            h.insert(
                header::AUTHORIZATION,
                HeaderValue::from_bytes(&bytes).unwrap(),
            );
            h
        };
        assert!(basic_credentials(&raw).is_err());
    }

    #[test]
    fn the_scheme_is_case_insensitive() {
        let (user, _) =
            basic_credentials(&basic(&encoded("alice:pw").replace("Basic", "bAsIc"))).unwrap();
        assert_eq!(user, "alice");
    }

    #[tokio::test]
    async fn a_successful_check_is_remembered_and_a_changed_entry_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("htpasswd");
        std::fs::write(&path, entry("alice", "pw")).unwrap();
        let htpasswd = Htpasswd::open("r", &path).await.unwrap();
        assert!(htpasswd.check("alice", b"pw").await);
        let table = htpasswd.table();
        let (hash, _) = table.hash_for("alice");
        assert!(
            htpasswd
                .verified
                .contains_key(&remembered_key("alice", b"pw", hash))
        );
        assert!(!htpasswd.check("alice", b"nope").await);
        assert!(
            !htpasswd
                .verified
                .contains_key(&remembered_key("alice", b"nope", hash))
        );
        // A new password for alice: the old one no longer logs in, remembered or not.
        std::fs::write(&path, format!("{}\n", entry("alice", "new-password"))).unwrap();
        htpasswd.reload_if_changed().await;
        assert!(!htpasswd.check("alice", b"pw").await);
        assert!(htpasswd.check("alice", b"new-password").await);
    }

    #[tokio::test]
    async fn a_file_that_turns_invalid_keeps_the_last_good_users() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("htpasswd");
        std::fs::write(&path, entry("alice", "pw")).unwrap();
        let htpasswd = Htpasswd::open("r", &path).await.unwrap();
        std::fs::write(&path, "alice:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n").unwrap();
        htpasswd.reload_if_changed().await;
        assert!(htpasswd.check("alice", b"pw").await);
        std::fs::write(
            &path,
            format!("{}\n{}\n", entry("alice", "pw"), entry("bob", "b")),
        )
        .unwrap();
        htpasswd.reload_if_changed().await;
        assert!(htpasswd.check("bob", b"b").await);
    }

    #[tokio::test]
    async fn opening_an_invalid_file_fails() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("htpasswd");
        std::fs::write(&path, "alice:plain\n").unwrap();
        let e = Htpasswd::open("r", &path).await.unwrap_err();
        assert!(e.contains("line 1"), "{e}");
    }
}
