//! (stub until the keys-hook branch lands)
use crate::api::{KeyEntry, ServiceDoc};
pub struct ValidKey {
    pub algorithm: String,
    pub base64: String,
    pub fingerprint: String,
    pub bits: Option<u32>,
}
pub fn find_listed_key<'a>(
    _d: &'a ServiceDoc,
    _a: &str,
    _b: &str,
    _n: i64,
) -> Option<(&'a KeyEntry, ValidKey)> {
    None
}
