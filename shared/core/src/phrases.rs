//! Phrases that mean "give me a human" or "end this", matched after normalisation
//! (case, accents kept, punctuation and repeated spaces removed).

use std::borrow::Cow;

pub const DEFAULT_HANDOFF: &[&str] = &[
    // en
    "human",
    "agent",
    "operator",
    "talk to a person",
    "talk to a human",
    "real person",
    "speak to someone",
    // de
    "mitarbeiter",
    "mensch",
    "mit einem menschen sprechen",
    "mit einer person sprechen",
    "kundenservice",
    // hr
    "operater",
    "čovjek",
    "razgovarati s osobom",
    "živi agent",
    "podrška uživo",
    // zh
    "人工",
    "转人工",
    "人工客服",
    "真人",
    // fr
    "conseiller",
    "humain",
    "parler à une personne",
    "parler à un humain",
    "un agent",
];

pub const DEFAULT_END: &[&str] = &[
    "/end",
    "end chat",
    "end",
    "stop",
    "bye",
    "chat beenden",
    "beenden",
    "ende",
    "završi",
    "završi razgovor",
    "kraj",
    "结束",
    "结束对话",
    "terminer",
    "fin",
    "terminer la conversation",
];

/// Words that cancel a pending step (e-mail collection).
pub const CANCEL: &[&str] = &["cancel", "abbrechen", "odustani", "取消", "annuler"];

/// Lower-case, punctuation to spaces, spaces collapsed.
pub fn normalise(s: &str) -> String {
    normalised(s).into_owned()
}

/// [`normalise`], borrowing `s` when it is normalised already (as configured phrases
/// usually are: every message is compared with each of them).
fn normalised(s: &str) -> Cow<'_, str> {
    let kept = |c: char| c.is_alphanumeric() || c == '/';
    let mut prev_space = true;
    let clean = s.chars().all(|c| {
        let ok = if c == ' ' { !prev_space } else { kept(c) && c.to_lowercase().eq(std::iter::once(c)) };
        prev_space = c == ' ';
        ok
    }) && !prev_space;
    if clean || s.is_empty() {
        return Cow::Borrowed(s);
    }
    let mapped: String = s.chars().map(|c| if kept(c) { c.to_lowercase().next().unwrap_or(c) } else { ' ' }).collect();
    Cow::Owned(mapped.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// True when the whole message is one of the phrases, or (for phrases of two or more
/// words, and for CJK phrases) when it contains one. A single word like "agent" inside a
/// longer sentence does not count: "what does your agent software cost" is a question.
pub fn matches(message: &str, phrases: &[String]) -> bool {
    let m = normalise(message);
    if m.is_empty() {
        return false;
    }
    phrases.iter().any(|p| {
        let p = normalised(p);
        let p = p.as_ref();
        if p.is_empty() {
            return false;
        }
        if m == p {
            return true;
        }
        let multi_word = p.contains(' ');
        let cjk = p.chars().any(is_cjk);
        (multi_word && contains_words(&m, p)) || (cjk && m.contains(p) && m.chars().count() <= p.chars().count() + 6)
    })
}

/// Whether `needle` occurs in `haystack` as whole words (both normalised: single spaces).
fn contains_words(haystack: &str, needle: &str) -> bool {
    haystack.match_indices(needle).any(|(at, _)| {
        let end = at + needle.len();
        (at == 0 || haystack[..at].ends_with(' ')) && (end == haystack.len() || haystack[end..].starts_with(' '))
    })
}

pub fn is_cjk(c: char) -> bool {
    matches!(c as u32, 0x3040..=0x30FF | 0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xF900..=0xFAFF | 0xAC00..=0xD7AF)
}

pub fn is_cancel(message: &str) -> bool {
    let m = normalise(message);
    CANCEL.iter().any(|c| m == *c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> Vec<String> {
        DEFAULT_HANDOFF.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn whole_message_or_multi_word_phrase() {
        let p = defaults();
        assert!(matches("Human!", &p));
        assert!(matches("I want to talk to a human please", &p));
        assert!(matches("Ich möchte mit einem Menschen sprechen.", &p));
        assert!(matches("želim razgovarati s osobom", &p));
        assert!(matches("我要转人工", &p));
        assert!(matches("Je voudrais parler à une personne", &p));
        assert!(!matches("what does your agent software cost", &p));
        assert!(!matches("", &p));
    }

    /// The borrowed fast path gives what the full mapping gives.
    #[test]
    fn normalised_text_is_borrowed_and_the_rest_mapped() {
        let full = |s: &str| {
            let mapped: String = s
                .chars()
                .map(|c| if c.is_alphanumeric() || c == '/' { c.to_lowercase().next().unwrap_or(c) } else { ' ' })
                .collect();
            mapped.split_whitespace().collect::<Vec<_>>().join(" ")
        };
        for s in ["talk to a human", "转人工", "a/b c", "x", ""] {
            assert!(matches!(normalised(s), Cow::Borrowed(_)), "{s:?}");
            assert_eq!(normalised(s), full(s));
        }
        for s in ["Talk to a human", " human", "human ", "talk  to", "end.", "a\tb", "İstanbul", "ÉTÉ", "é\u{a0}x"]
        {
            assert!(matches!(normalised(s), Cow::Owned(_)), "{s:?}");
            assert_eq!(normalised(s), full(s), "{s:?}");
        }
    }

    #[test]
    fn multi_word_phrases_match_whole_words_only() {
        let p = vec!["talk to a human".to_string(), "end chat".to_string()];
        assert!(matches("ok, talk to a human", &p));
        assert!(matches("End chat now", &p));
        assert!(!matches("talk to a humanoid", &p));
        assert!(!matches("weekend chat", &p));
        assert!(!matches("weekend chat, end chatter", &p));
        assert!(matches("weekend chat, end chat", &p));
    }

    #[test]
    fn cancel_words() {
        assert!(is_cancel("Cancel."));
        assert!(is_cancel("取消"));
        assert!(!is_cancel("cancel my order"));
    }
}
