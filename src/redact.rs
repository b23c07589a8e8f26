//! Redaction: the one place that decides what of a secret may never appear in text we keep,
//! print or label.
//!
//! Three tools, for three kinds of secret:
//! - [`api_keys`]: API keys recognised by their shape (`sk-…` and the like), for values that come
//!   from the gateway's rows (a model name, an error text) and reach a summary, an alert, a log
//!   line or a metrics label;
//! - [`Scrubber`]: secrets we know (the SMTP password), in every encoding we send them, for text
//!   a server may echo back;
//! - [`json::redact`]: JSON keys in archived payloads.

use std::borrow::Cow;
use std::fmt;

pub mod json;

/// What replaces a secret in text.
pub const REDACTED: &str = "[redacted]";

/// API key prefixes and the least number of key characters that must follow one for the run to
/// be taken as a key. Keys are long random runs; the minimum keeps words such as `sk-learn` or
/// `task-runner` intact.
const KEY_PREFIXES: &[(&str, usize)] = &[
    // OpenAI (sk-proj-…, sk-svcacct-…), Anthropic (sk-ant-…), OpenRouter (sk-or-v1-…),
    // DeepSeek, Moonshot and most OpenAI-compatible providers.
    ("sk-", 20),
    // Stripe-style secret keys (sk_live_…), also used by some gateways for their own keys.
    ("sk_", 20),
    // Groq.
    ("gsk_", 20),
    // xAI.
    ("xai-", 20),
    // Perplexity.
    ("pplx-", 20),
    // Replicate.
    ("r8_", 20),
    // Hugging Face.
    ("hf_", 20),
    // Google API keys: AIza and 35 more characters.
    ("AIza", 30),
    // GitHub tokens.
    ("ghp_", 20),
    ("gho_", 20),
    ("ghs_", 20),
    ("github_pat_", 20),
    // AWS access key ids: AKIA and 16 more characters.
    ("AKIA", 16),
];

/// Characters an API key is made of after its prefix.
fn is_key_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// `text` with every API key it holds replaced: the prefix stays, so the reader still sees what
/// kind of key was there (`mystery-model-sk-proj-AbC…` becomes `mystery-model-sk-[redacted]`).
/// A prefix counts only at the start of a word, so `task-…` is not an `sk-` key. Idempotent.
pub fn api_keys(text: &str) -> Cow<'_, str> {
    let bytes = text.as_bytes();
    let mut out = String::new();
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        let at_word_start = i == 0 || !bytes[i - 1].is_ascii_alphanumeric();
        let key = at_word_start
            .then(|| key_at(bytes, i))
            .flatten()
            .filter(|&(prefix, end)| end - (i + prefix) >= min_body(&text[i..i + prefix]));
        match key {
            Some((prefix, end)) => {
                // Prefixes are ASCII, so `i + prefix` and `end` are character boundaries.
                out.push_str(&text[copied..i + prefix]);
                out.push_str(REDACTED);
                copied = end;
                i = end;
            }
            None => i += 1,
        }
    }
    if copied == 0 {
        return Cow::Borrowed(text);
    }
    out.push_str(&text[copied..]);
    Cow::Owned(out)
}

/// The prefix length and the end of the key characters when a known prefix starts at `i`.
fn key_at(bytes: &[u8], i: usize) -> Option<(usize, usize)> {
    let (prefix, _) = KEY_PREFIXES
        .iter()
        .find(|(prefix, _)| bytes[i..].starts_with(prefix.as_bytes()))?;
    let start = i + prefix.len();
    let len = bytes[start..]
        .iter()
        .take_while(|&&b| is_key_char(b))
        .count();
    Some((prefix.len(), start + len))
}

fn min_body(prefix: &str) -> usize {
    KEY_PREFIXES
        .iter()
        .find(|(p, _)| *p == prefix)
        .map_or(usize::MAX, |(_, min)| *min)
}

/// The shortest piece of a known secret that is still scrubbed when it appears on its own: a
/// server may echo a truncated argument, and eight base64 characters already give away six
/// bytes of a password.
const MIN_FRAGMENT: usize = 8;

/// Removes known secrets from text, in every form the caller lists (the secret itself and each
/// encoding of it that was sent). A word that shares [`MIN_FRAGMENT`] or more characters with a
/// form is removed whole, so a truncated or re-wrapped echo goes too.
#[derive(Clone, Default)]
pub struct Scrubber {
    /// Longest first, so that a form containing another is replaced whole.
    forms: Vec<String>,
}

impl fmt::Debug for Scrubber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Scrubber({} forms)", self.forms.len())
    }
}

impl Scrubber {
    pub fn new(forms: impl IntoIterator<Item = String>) -> Self {
        let mut forms: Vec<String> = forms.into_iter().filter(|f| !f.is_empty()).collect();
        forms.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        forms.dedup();
        Self { forms }
    }

    pub fn scrub<'a>(&self, text: &'a str) -> Cow<'a, str> {
        if self.forms.is_empty() {
            return Cow::Borrowed(text);
        }
        let mut text = Cow::Borrowed(text);
        for form in &self.forms {
            if text.contains(form.as_str()) {
                text = Cow::Owned(text.replace(form.as_str(), REDACTED));
            }
        }
        // Words: runs of characters that are not space or punctuation around an echo.
        let is_word = |c: char| !(c.is_whitespace() || "\"'`()<>[]{},;:".contains(c));
        let mut out = String::new();
        let mut copied = 0;
        let mut rest = text.char_indices().peekable();
        while let Some((start, c)) = rest.next() {
            if !is_word(c) {
                continue;
            }
            let mut end = start + c.len_utf8();
            while let Some(&(i, c)) = rest.peek() {
                if !is_word(c) {
                    break;
                }
                end = i + c.len_utf8();
                rest.next();
            }
            let word = &text[start..end];
            if word.len() >= MIN_FRAGMENT
                && self
                    .forms
                    .iter()
                    .any(|form| longest_common(word.as_bytes(), form.as_bytes()) >= MIN_FRAGMENT)
            {
                out.push_str(&text[copied..start]);
                out.push_str(REDACTED);
                copied = end;
            }
        }
        if copied == 0 {
            return text;
        }
        out.push_str(&text[copied..]);
        Cow::Owned(out)
    }
}

/// Length of the longest common substring of `a` and `b` (bytes).
fn longest_common(a: &[u8], b: &[u8]) -> usize {
    let mut previous = vec![0usize; b.len() + 1];
    let mut current = vec![0usize; b.len() + 1];
    let mut best = 0;
    for &x in a {
        for (j, &y) in b.iter().enumerate() {
            current[j + 1] = if x == y { previous[j] + 1 } else { 0 };
            best = best.max(current[j + 1]);
        }
        std::mem::swap(&mut previous, &mut current);
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY40: &str = "AbCdEfGhIjKlMnOpQrStUvWxYz0123456789-_Qw";

    #[test]
    fn api_keys_table() {
        let proj = format!("sk-proj-{KEY40}");
        let cases: Vec<(String, String)> = vec![
            (
                format!("mystery-model-{proj}"),
                "mystery-model-sk-[redacted]".into(),
            ),
            (
                format!("unpriced: mystery-model-{proj} (3 rows), gpt-4o (1 rows)"),
                "unpriced: mystery-model-sk-[redacted] (3 rows), gpt-4o (1 rows)".into(),
            ),
            (
                format!("model=\"{proj}\""),
                "model=\"sk-[redacted]\"".into(),
            ),
            (format!("sk-ant-api03-{KEY40}"), "sk-[redacted]".into()),
            (
                format!("key AIza{KEY40} and gsk_{KEY40}"),
                "key AIza[redacted] and gsk_[redacted]".into(),
            ),
            ("AKIAIOSFODNN7EXAMPLE".into(), "AKIA[redacted]".into()),
            // Too short to be a key, or not at the start of a word.
            (
                "sk-learn sk-short-name".into(),
                "sk-learn sk-short-name".into(),
            ),
            (format!("task-{KEY40}"), format!("task-{KEY40}")),
            (format!("disk-{KEY40}"), format!("disk-{KEY40}")),
            ("".into(), "".into()),
            (format!("é{proj}ü"), "ésk-[redacted]ü".into()),
            // Already redacted text stays as it is.
            ("sk-[redacted]".into(), "sk-[redacted]".into()),
        ];
        for (input, expected) in cases {
            assert_eq!(api_keys(&input), expected, "input {input:?}");
        }
    }

    #[test]
    fn text_without_keys_is_borrowed() {
        assert!(matches!(api_keys("gpt-4o (3 rows)"), Cow::Borrowed(_)));
        assert!(matches!(
            Scrubber::new(["hunter2hunter2".to_string()]).scrub("nothing here"),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn scrubber_removes_every_form_and_fragments_of_them() {
        let scrubber = Scrubber::new([
            "hunter2".to_string(),
            "aHVudGVyMg==".to_string(),
            "AGFsaWNlAGh1bnRlcjI=".to_string(),
            String::new(),
        ]);
        let cases = [
            (
                "535 bad login alice/hunter2 (hunter2)",
                "535 bad login alice/[redacted] ([redacted])",
            ),
            (
                "535 5.7.8 AUTH PLAIN AGFsaWNlAGh1bnRlcjI= invalid",
                "535 5.7.8 AUTH PLAIN [redacted] invalid",
            ),
            (
                "535 rejected aHVudGVyMg== for YWxpY2U=",
                "535 rejected [redacted] for YWxpY2U=",
            ),
            // A truncated echo, and one glued to other text.
            (
                "535 bad argument 'AGFsaWNlAGh1bn...'",
                "535 bad argument '[redacted]'",
            ),
            ("535 arg=AGFsaWNlAGh1", "535 [redacted]"),
            // Too short a piece to say anything.
            ("535 aGVsbG8 hunter", "535 aGVsbG8 hunter"),
        ];
        for (input, expected) in cases {
            assert_eq!(scrubber.scrub(input), expected, "input {input:?}");
        }
        assert!(!format!("{scrubber:?}").contains("hunter2"));
        assert_eq!(Scrubber::default().scrub("hunter2"), "hunter2");
    }

    #[test]
    fn longest_common_substring() {
        assert_eq!(longest_common(b"abcdef", b"zcdez"), 3);
        assert_eq!(longest_common(b"", b"abc"), 0);
        assert_eq!(longest_common(b"abc", b"abc"), 3);
    }
}
