//! E-mail address validation, strict enough to catch typos, loose enough for real addresses.

/// A single address `local@domain.tld`, no spaces, at most 254 bytes.
pub fn is_valid(s: &str) -> bool {
    if s.len() > 254 || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return false;
    }
    let Some((local, domain)) = s.rsplit_once('@') else {
        return false;
    };
    if local.is_empty() || local.len() > 64 || local.contains('@') {
        return false;
    }
    let labels: Vec<&str> = domain.split('.').collect();
    labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_alphanumeric() || c == '-')
        })
}

/// The first e-mail-looking word of a message ("my mail is a@b.co" -> "a@b.co").
pub fn find_in(text: &str) -> Option<String> {
    text.split(|c: char| c.is_whitespace() || matches!(c, ',' | ';' | '<' | '>' | '(' | ')' | '"'))
        .map(|w| w.trim_end_matches(['.', '!', '?', ':']))
        .find(|w| is_valid(w))
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_rejects() {
        assert!(is_valid("a@b.co"));
        assert!(is_valid("first.last+tag@mail.example.hr"));
        for bad in ["", "a", "a@b", "@b.co", "a@.co", "a b@c.de", "a@b..de", "a@-b.de"] {
            assert!(!is_valid(bad), "{bad}");
        }
    }

    #[test]
    fn finds_address_in_sentence() {
        assert_eq!(find_in("sure, it's jo@x.org."), Some("jo@x.org".into()));
        assert_eq!(find_in("no address here"), None);
    }
}
