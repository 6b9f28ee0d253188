//! A map keyed by function name and version, looked up by the two names as they are: no key is built (no
//! allocation) to find an entry, only to add one. Used where a lookup is on the invoke path or per log batch:
//! the registry's environments of a version, the invoke counters, the log files.

use std::collections::HashMap;

/// Values by function name, then version.
#[derive(Debug)]
pub struct VersionMap<T> {
    by_function: HashMap<String, HashMap<String, T>>,
}

impl<T> Default for VersionMap<T> {
    fn default() -> Self {
        Self {
            by_function: HashMap::new(),
        }
    }
}

impl<T> VersionMap<T> {
    pub fn get(&self, function: &str, version: &str) -> Option<&T> {
        self.by_function.get(function)?.get(version)
    }

    pub fn get_mut(&mut self, function: &str, version: &str) -> Option<&mut T> {
        self.by_function.get_mut(function)?.get_mut(version)
    }

    /// The value of a function version, made by `make` when it has none. Copies both names: on a hot path,
    /// call it only after [`Self::get`] missed.
    pub fn get_or_insert_with(
        &mut self,
        function: &str,
        version: &str,
        make: impl FnOnce() -> T,
    ) -> &mut T {
        self.by_function
            .entry(function.to_owned())
            .or_default()
            .entry(version.to_owned())
            .or_insert_with(make)
    }

    /// Removes a function version's value; a function left without versions goes too.
    pub fn remove(&mut self, function: &str, version: &str) -> Option<T> {
        let versions = self.by_function.get_mut(function)?;
        let removed = versions.remove(version);
        if versions.is_empty() {
            self.by_function.remove(function);
        }
        removed
    }

    /// Every (function, version, value), in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str, &T)> {
        self.by_function.iter().flat_map(|(function, versions)| {
            versions
                .iter()
                .map(move |(version, v)| (function.as_str(), version.as_str(), v))
        })
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.by_function.values_mut().flat_map(HashMap::values_mut)
    }
}

#[cfg(test)]
mod tests {
    use super::VersionMap;

    #[test]
    fn versions_are_found_by_their_names_and_an_emptied_function_goes() {
        let mut m = VersionMap::default();
        *m.get_or_insert_with("f", "1", || 0) += 1;
        *m.get_or_insert_with("f", "1", || 100) += 1;
        m.get_or_insert_with("f", "2", || 7);
        m.get_or_insert_with("g", "1", || 9);
        assert_eq!(m.get("f", "1"), Some(&2));
        assert_eq!(m.get("f", "3"), None);
        assert_eq!(m.get("h", "1"), None);
        let mut all: Vec<_> = m
            .iter()
            .map(|(f, v, n)| (f.to_owned(), v.to_owned(), *n))
            .collect();
        all.sort();
        assert_eq!(all.len(), 3);
        assert_eq!(m.remove("g", "1"), Some(9));
        assert_eq!(m.remove("g", "1"), None);
        assert!(
            !m.by_function.contains_key("g"),
            "a function without versions is removed"
        );
        m.values_mut().for_each(|n| *n = 0);
        assert_eq!(m.get("f", "2"), Some(&0));
    }
}
