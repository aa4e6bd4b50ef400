//! The kernel command line (`/proc/cmdline`): Cairn's own parameters are dotted
//! (`cairn.config=…`), because undotted unknown parameters become init's environment.

/// A parsed kernel command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelCmdline {
    params: Vec<(String, Option<String>)>,
}

impl KernelCmdline {
    /// Splits a command line into `key[=value]` words, honouring double quotes the way
    /// the kernel does (`key="a b"` is one word whose value is `a b`).
    pub fn parse(text: &str) -> Self {
        let mut params = Vec::new();
        let mut word = String::new();
        let mut in_quotes = false;
        let mut flush = |word: &mut String| {
            if !word.is_empty() {
                let param = match word.split_once('=') {
                    Some((key, value)) => (key.to_owned(), Some(value.to_owned())),
                    None => (word.clone(), None),
                };
                params.push(param);
                word.clear();
            }
        };
        for c in text.chars() {
            match c {
                '"' => in_quotes = !in_quotes,
                c if c.is_whitespace() && !in_quotes => flush(&mut word),
                c => word.push(c),
            }
        }
        flush(&mut word);
        Self { params }
    }

    /// The value of the last occurrence of `key` (later words override earlier ones,
    /// as with the kernel's own parameters).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.as_deref())
    }

    /// Whether `key` appears at all, with or without a value.
    pub fn has(&self, key: &str) -> bool {
        self.params.iter().any(|(k, _)| k == key)
    }

    /// The comma-separated values of `key`, e.g. `cairn.test=crashloop,orphans`.
    pub fn list(&self, key: &str) -> Vec<String> {
        self.get(key)
            .map(|v| {
                v.split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_values_flags_and_quotes() {
        let line = KernelCmdline::parse(
            "console=ttyS0 quiet cairn.test=crashloop,orphans cairn.note=\"a b\" console=hvc0\n",
        );
        assert_eq!(line.get("console"), Some("hvc0"));
        assert!(line.has("quiet"));
        assert_eq!(line.get("quiet"), None);
        assert_eq!(line.get("cairn.note"), Some("a b"));
        assert_eq!(line.list("cairn.test"), ["crashloop", "orphans"]);
        assert!(line.list("cairn.absent").is_empty());
    }

    #[test]
    fn base64_values_keep_their_padding() {
        let line = KernelCmdline::parse("cairn.config=YWJj== x");
        assert_eq!(line.get("cairn.config"), Some("YWJj=="));
    }
}
