//! Text to index terms, the same way for FAQ entries and for questions, so that
//! whatever spelling variants it folds together match in both directions.
//!
//! Deliberately small: no dictionaries, no language detection. Latin-script words are
//! lower-cased, stripped of accents (users often type without them), German `ae/oe/ue`
//! and Croatian `dj` are folded onto the umlaut / `đ` spelling, stop words are dropped
//! and a few English-style suffixes are cut. CJK text has no spaces, so it is indexed
//! as overlapping character bigrams.

use baton_core::phrases::is_cjk;

/// Terms of `text`, in order, duplicates kept.
pub fn tokenize(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut cjk: Vec<char> = Vec::new();
    for c in text.chars().map(narrow) {
        if is_cjk(c) {
            flush_word(&mut word, &mut out);
            cjk.push(c);
        } else if c.is_alphanumeric() || is_combining_mark(c) {
            flush_cjk(&mut cjk, &mut out);
            for lower in c.to_lowercase() {
                fold_into(lower, &mut word);
            }
        } else {
            flush_word(&mut word, &mut out);
            flush_cjk(&mut cjk, &mut out);
        }
    }
    flush_word(&mut word, &mut out);
    flush_cjk(&mut cjk, &mut out);
    out
}

/// Full-width ASCII (common in Chinese and Japanese input) to plain ASCII.
fn narrow(c: char) -> char {
    match c {
        '\u{FF01}'..='\u{FF5E}' => char::from_u32(c as u32 - 0xFEE0).unwrap_or(c),
        _ => c,
    }
}

/// Combining accents of decomposed (NFD) input: part of the word, then dropped.
fn is_combining_mark(c: char) -> bool {
    matches!(c, '\u{0300}'..='\u{036F}')
}

/// Appends `c` without its accent. A table of the letters of the supported Latin-script
/// languages (de, hr, fr) and their neighbours; other letters pass through.
fn fold_into(c: char, word: &mut String) {
    let folded = match c {
        _ if is_combining_mark(c) => return,
        'à' | 'á' | 'â' | 'ã' | 'ä' | 'å' | 'ā' | 'ă' | 'ą' => 'a',
        'ç' | 'ć' | 'ĉ' | 'ċ' | 'č' => 'c',
        'ď' | 'đ' | 'ð' => 'd',
        'è' | 'é' | 'ê' | 'ë' | 'ē' | 'ĕ' | 'ė' | 'ę' | 'ě' => 'e',
        'ĝ' | 'ğ' | 'ġ' | 'ģ' => 'g',
        'ì' | 'í' | 'î' | 'ï' | 'ĩ' | 'ī' | 'į' | 'ı' => 'i',
        'ķ' => 'k',
        'ĺ' | 'ļ' | 'ľ' | 'ŀ' | 'ł' => 'l',
        'ñ' | 'ń' | 'ņ' | 'ň' => 'n',
        'ò' | 'ó' | 'ô' | 'õ' | 'ö' | 'ø' | 'ō' | 'ŏ' | 'ő' => 'o',
        'ŕ' | 'ŗ' | 'ř' => 'r',
        'ś' | 'ŝ' | 'ş' | 'š' | 'ș' => 's',
        'ţ' | 'ť' | 'ț' => 't',
        'ù' | 'ú' | 'û' | 'ü' | 'ũ' | 'ū' | 'ŭ' | 'ů' | 'ű' | 'ų' => 'u',
        'ý' | 'ÿ' => 'y',
        'ź' | 'ż' | 'ž' => 'z',
        'æ' => return word.push_str("ae"),
        'œ' => return word.push_str("oe"),
        'ß' => return word.push_str("ss"),
        'þ' => return word.push_str("th"),
        _ => c,
    };
    word.push(folded);
}

fn flush_word(word: &mut String, out: &mut Vec<String>) {
    if word.is_empty() {
        return;
    }
    let w = std::mem::take(word);
    if let Some(term) = word_term(w) {
        out.push(term);
    }
}

/// Bigrams of a CJK run; a lone character stands for itself.
fn flush_cjk(run: &mut Vec<char>, out: &mut Vec<String>) {
    match run.len() {
        0 => return,
        1 => out.push(run[0].to_string()),
        _ => out.extend(run.windows(2).map(|p| p.iter().collect::<String>())),
    }
    run.clear();
}

/// A folded, lower-case word to its term, or `None` for noise (stop words, single letters).
fn word_term(w: String) -> Option<String> {
    let mut chars = w.chars();
    let single = chars.next().is_some() && chars.next().is_none();
    if single && !w.chars().all(|c| c.is_numeric()) {
        return None;
    }
    if STOP_WORDS.contains(&w.as_str()) {
        return None;
    }
    let term = stem(collapse_digraphs(&w));
    (!term.is_empty()).then_some(term)
}

/// Words that carry no topic. Matched after accent folding, so listed without accents.
/// Short on purpose: BM25's idf already discounts words found in many entries.
const STOP_WORDS: &[&str] = &[
    // en
    "an", "the", "is", "are", "am", "was", "were", "be", "been", "to", "of", "in", "on", "at", "for", "and", "or", "it",
    "its", "you", "your", "we", "our", "my", "me", "do", "does", "did", "can", "could", "would", "will", "what",
    "when", "where", "how", "who", "why", "which", "this", "that", "there", "with", "about", "please", "hi", "hello",
    "have", "has", "tell", "know", "want", "need", "like", "any", "if", // de
    "der", "die", "das", "den", "dem", "des", "ein", "eine", "einen", "einem", "und", "oder", "ist", "sind", "ich",
    "du", "sie", "wir", "ihr", "ihre", "ihnen", "es", "mit", "fur", "zu", "von", "im", "bei", "auf", "wann", "wo",
    "wie", "wer", "welche", "kann", "konnen", "bitte", "hallo", "mir", "mich", "uns", "haben", "gibt", // hr
    "je", "su", "na", "za", "od", "da", "li", "se", "smo", "ste", "koji", "koja", "koje", "sto", "sta", "kada", "kad",
    "gdje", "kako", "ja", "ti", "mi", "vi", "vas", "vase", "vasa", "vasi", "nas", "vam", "kakvo", "kakav", "kakva",
    "mogu", "moze", "molim", "bok", // fr
    "le", "la", "les", "un", "une", "du", "de", "et", "ou", "est", "sont", "je", "tu", "il", "elle", "nous", "vous",
    "vos", "votre", "mon", "ma", "mes", "quel", "quelle", "quels", "quelles", "quand", "comment", "pour", "avec", "au",
    "aux", "en", "ce", "que", "qui", "quoi", "bonjour", "ne", "pas", "sur", "dans", "par",
];

/// German transliteration folded onto the umlaut: `ae`, `oe` → `a`, `o`; `ue` → `u`
/// unless after a vowel or `q` (as Lucene's German normalisation does), so "Oeffnungszeiten"
/// meets "Öffnungszeiten". Croatian `dj` → `d` for the same reason with `đ`. Applied to
/// every word: harmless elsewhere because questions and entries are folded alike.
fn collapse_digraphs(w: &str) -> String {
    #[derive(PartialEq)]
    enum Prev {
        /// Start of word or a consonant.
        Plain,
        /// `a`/`o`, or a `u` that may start a `ue`.
        Umlaut,
        /// A vowel (or `q`) after which `ue` stays.
        Vowel,
        /// `d`, which may start a `dj`.
        D,
    }
    let mut out = String::with_capacity(w.len());
    let mut prev = Prev::Plain;
    for c in w.chars() {
        let (keep, next) = match c {
            'e' if prev == Prev::Umlaut => (false, Prev::Vowel),
            'j' if prev == Prev::D => (false, Prev::Plain),
            'a' | 'o' => (true, Prev::Umlaut),
            'u' if matches!(prev, Prev::Plain | Prev::D) => (true, Prev::Umlaut),
            'e' | 'i' | 'u' | 'y' | 'q' => (true, Prev::Vowel),
            'd' => (true, Prev::D),
            _ => (true, Prev::Plain),
        };
        if keep {
            out.push(c);
        }
        prev = next;
    }
    out
}

/// A few suffixes, cut the same way everywhere so inflected forms meet: plural `s`/`ies`,
/// `ing`, `ed` and a final `e` ("opening", "opens", "opened" → "open"; "Preise" → "preis").
fn stem(mut w: String) -> String {
    // A word ending in `e` is no plural; otherwise "close" would become "clo".
    if !strip_final_e(&mut w) {
        let len = w.chars().count();
        if len > 4 && w.ends_with("ies") {
            w.truncate(w.len() - 3);
            w.push('y');
        } else if len > 3 && is_plural_s(&w) {
            w.pop();
        }
        strip_final_e(&mut w);
    }
    let len = w.chars().count();
    for (suffix, min_len) in [("ing", 6), ("ed", 5)] {
        if len >= min_len && w.ends_with(suffix) {
            let stem = &w[..w.len() - suffix.len()];
            if stem.chars().any(|c| matches!(c, 'a' | 'e' | 'i' | 'o' | 'u' | 'y')) {
                w.truncate(stem.len());
                undouble(&mut w);
                break;
            }
        }
    }
    w
}

/// A final `s`, except where it is usually part of the word: "class", "status", "Preis",
/// "basis" (but the French "-ais" plural, "délais", is cut).
fn is_plural_s(w: &str) -> bool {
    let Some(stem) = w.strip_suffix('s') else {
        return false;
    };
    match stem.chars().last() {
        Some('s' | 'u') => false,
        Some('i') => stem.ends_with("ai"),
        _ => true,
    }
}

fn strip_final_e(w: &mut String) -> bool {
    let strip = w.ends_with('e') && w.chars().count() > 4;
    if strip {
        w.pop();
    }
    strip
}

/// "shipp" → "ship", "runn" → "run"; keeps "ll", "ss", "zz" ("selling" → "sell").
fn undouble(w: &mut String) {
    let mut tail = w.chars().rev();
    if let (Some(a), Some(b)) = (tail.next(), tail.next()) {
        if a == b && a.is_ascii_alphabetic() && !matches!(a, 'a' | 'e' | 'i' | 'o' | 'u' | 'l' | 's' | 'z') {
            w.pop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Vec<String> {
        tokenize(s)
    }

    #[test]
    fn english_words_meet_their_inflections() {
        assert_eq!(t("What are your opening hours?"), ["open", "hour"]);
        assert_eq!(t("When are you open"), ["open"]);
        assert_eq!(t("opens opened"), ["open", "open"]);
        assert_eq!(t("shipping ships shipped"), ["ship", "ship", "ship"]);
        assert_eq!(t("closing closes close closed"), ["clos", "clos", "clos", "clos"]);
        assert_eq!(t("policies policy"), ["policy", "policy"]);
        assert_eq!(t("prices price"), ["pric", "pric"]);
        assert_eq!(t("Preise Preis"), ["preis", "preis"]);
        assert_eq!(t("status class basis"), ["status", "class", "basis"]);
        assert_eq!(t("délais délai"), ["delai", "delai"]);
        assert_eq!(t("string"), ["string"], "no vowel before -ing: not a suffix");
    }

    #[test]
    fn accents_and_transliterations_fold_together() {
        assert_eq!(t("Öffnungszeiten"), t("öffnungszeiten"));
        assert_eq!(t("Öffnungszeiten"), t("Oeffnungszeiten"));
        assert_eq!(t("Öffnungszeiten"), t("offnungszeiten"));
        assert_eq!(t("Straße"), t("strasse"));
        assert_eq!(t("Grüße"), t("Gruesse"));
        assert_eq!(collapse_digraphs("queue"), "queue", "ue after q or a vowel stays");
        assert_eq!(collapse_digraphs("blue"), "blu");
        assert_eq!(t("košta čokolada žuto ćevapi"), t("kosta cokolada zuto cevapi"));
        assert_eq!(t("između"), t("izmedju"));
        assert_eq!(t("između"), t("izmedu"));
        assert_eq!(t("délais livraison"), t("delais livraison"));
        // Decomposed input: e + combining acute.
        assert_eq!(t("de\u{301}lais"), t("délais"));
    }

    #[test]
    fn stop_words_and_single_letters_are_dropped_digits_kept() {
        assert_eq!(t("Wie sind Ihre Öffnungszeiten?"), ["offnungszeiten"]);
        assert_eq!(t("Quels sont les délais de livraison ?"), ["delai", "livraison"]);
        assert_eq!(t("Kakvo je vaše radno vrijeme?"), ["radno", "vrijem"]);
        assert_eq!(t("what's a 2 l'heure"), ["2", "heur"]);
    }

    #[test]
    fn cjk_runs_become_bigrams() {
        assert_eq!(t("营业时间？"), ["营业", "业时", "时间"]);
        assert_eq!(t("人"), ["人"]);
        assert_eq!(t("营业时间 9点"), ["营业", "业时", "时间", "9", "点"]);
        assert_eq!(t("ｗｉｆｉ密码"), ["wifi", "密码"], "full-width Latin is narrowed");
    }

    #[test]
    fn nothing_to_index() {
        assert!(t("").is_empty());
        assert!(t("?!  ... ---").is_empty());
        assert!(t("the and of").is_empty());
    }
}
