//! (stub until the keys-hook branch lands)
use crate::api::ServiceDoc;
use crate::names::ServiceId;
use std::path::Path;
pub struct CachedAnswer {
    pub fetched_at: i64,
    pub doc: Option<ServiceDoc>,
}
#[derive(Debug)]
pub enum CacheError {
    Corrupt(String),
}
impl std::fmt::Display for CacheError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}
pub fn read(
    _dir: &Path,
    _s: &ServiceId,
    _o: Option<u32>,
) -> Result<Option<CachedAnswer>, CacheError> {
    Ok(None)
}
