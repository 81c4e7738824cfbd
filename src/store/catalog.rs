//! The catalog: every repository of the store.

use super::{Paginated, Store};
use crate::error::Result;
use crate::name::RepositoryName;

impl Store {
    /// Repository names in lexical order, at most `n` of them, starting after `last`.
    ///
    /// A repository is listed from the first blob link or manifest written to it.
    ///
    /// # Errors
    /// Backend failures only.
    pub async fn catalog(
        &self,
        n: Option<usize>,
        last: Option<&str>,
    ) -> Result<Paginated<RepositoryName>> {
        let keys = self.keys();
        let listed = self.list_keys(&keys.catalog_prefix()).await?;
        let names = listed
            .iter()
            .filter_map(|key| keys.repository_from_catalog_key(key))
            .collect();
        Ok(Paginated::page(names, n, last))
    }
}
