//! Phrases that mean "give me a human" or "end this", matched after normalisation
//! (case, accents kept, punctuation and repeated spaces removed).

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
    let mapped: String = s
        .chars()
        .map(|c| if c.is_alphanumeric() || c == '/' { c.to_lowercase().next().unwrap_or(c) } else { ' ' })
        .collect();
    mapped.split_whitespace().collect::<Vec<_>>().join(" ")
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
        let p = normalise(p);
        if p.is_empty() {
            return false;
        }
        if m == p {
            return true;
        }
        let multi_word = p.contains(' ');
        let cjk = p.chars().any(is_cjk);
        (multi_word && contains_words(&m, &p)) || (cjk && m.contains(&p) && m.chars().count() <= p.chars().count() + 6)
    })
}

fn contains_words(haystack: &str, needle: &str) -> bool {
    let h = format!(" {haystack} ");
    h.contains(&format!(" {needle} "))
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

    #[test]
    fn cancel_words() {
        assert!(is_cancel("Cancel."));
        assert!(is_cancel("取消"));
        assert!(!is_cancel("cancel my order"));
    }
}
