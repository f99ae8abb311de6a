//! The offline FAQ brain: BM25 over the agent's FAQ entries. No model, no network, so
//! every agent can answer its common questions out of the box, in any supported language.

mod brain;
mod text;

pub use brain::FaqBrain;
pub use text::tokenize;

use baton_core::agent::FaqEntry;
use std::collections::{HashMap, HashSet};

/// BM25 term-frequency saturation.
pub const K1: f64 = 1.2;
/// BM25 length normalisation.
pub const B: f64 = 0.75;
/// Weight of a term in the question or the keywords: that is what the entry is about.
pub const QUESTION_WEIGHT: f64 = 2.0;
/// Weight of a term in the answer.
pub const ANSWER_WEIGHT: f64 = 1.0;
/// Entries idf assumes on top of the real ones, none of which contains the term.
///
/// Plain BM25 idf says little in a FAQ of one to a few entries (one entry: every term is
/// in every document), so an exact question would score below any useful absolute
/// threshold. With this prior a term found in one entry weighs about 2-4 whatever the
/// FAQ's size, and a term found in every entry of a large FAQ still weighs little.
pub const PRIOR_DOCS: f64 = 10.0;

/// A BM25 index of FAQ entries. Build once per FAQ; searching does not allocate per entry
/// beyond one score slot.
#[derive(Debug, Clone, Default)]
pub struct FaqIndex {
    terms: HashMap<String, Term>,
    /// Weighted term count of each entry.
    doc_len: Vec<f64>,
    avg_len: f64,
}

#[derive(Debug, Clone)]
struct Term {
    idf: f64,
    /// (entry index, weighted term frequency), entry index ascending.
    postings: Vec<(usize, f64)>,
}

impl FaqIndex {
    /// Each entry is one document: question and keywords at [`QUESTION_WEIGHT`], answer at
    /// [`ANSWER_WEIGHT`].
    pub fn build(entries: &[FaqEntry]) -> FaqIndex {
        let mut postings: HashMap<String, Vec<(usize, f64)>> = HashMap::new();
        let mut doc_len = Vec::with_capacity(entries.len());
        for (i, entry) in entries.iter().enumerate() {
            let mut tf: HashMap<String, f64> = HashMap::new();
            let mut add = |text: &str, weight: f64| {
                for term in tokenize(text) {
                    *tf.entry(term).or_insert(0.0) += weight;
                }
            };
            add(&entry.question, QUESTION_WEIGHT);
            for keyword in &entry.keywords {
                add(keyword, QUESTION_WEIGHT);
            }
            add(&entry.answer, ANSWER_WEIGHT);
            doc_len.push(tf.values().sum::<f64>());
            for (term, f) in tf {
                postings.entry(term).or_default().push((i, f));
            }
        }
        let n = entries.len() as f64;
        let terms = postings
            .into_iter()
            .map(|(term, postings)| {
                let df = postings.len() as f64;
                let idf = (1.0 + (n + PRIOR_DOCS - df + 0.5) / (df + 0.5)).ln();
                (term, Term { idf, postings })
            })
            .collect();
        let total: f64 = doc_len.iter().sum();
        let avg_len = if total > 0.0 { total / n } else { 1.0 };
        FaqIndex { terms, doc_len, avg_len }
    }

    /// Number of indexed entries.
    pub fn len(&self) -> usize {
        self.doc_len.len()
    }

    pub fn is_empty(&self) -> bool {
        self.doc_len.is_empty()
    }

    /// The best entry for `query` and its BM25 score, or `None` when no entry shares a
    /// term with it. Equal scores go to the earlier entry. Each distinct query term counts
    /// once, so repeating a word does not push a weak match over the threshold.
    pub fn search(&self, query: &str) -> Option<(usize, f64)> {
        let scores = self.scores(query)?;
        let mut best: Option<(usize, f64)> = None;
        for (doc, &score) in scores.iter().enumerate() {
            if score > 0.0 && best.is_none_or(|(_, b)| score > b) {
                best = Some((doc, score));
            }
        }
        best
    }

    /// Every entry sharing a term with `query`, best first (equal scores: earlier first).
    pub fn ranked(&self, query: &str) -> Vec<(usize, f64)> {
        let mut hits: Vec<(usize, f64)> =
            self.scores(query).unwrap_or_default().into_iter().enumerate().filter(|(_, s)| *s > 0.0).collect();
        hits.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        hits
    }

    /// The BM25 score of every entry (`None` for an empty index).
    fn scores(&self, query: &str) -> Option<Vec<f64>> {
        if self.is_empty() {
            return None;
        }
        let mut scores = vec![0.0_f64; self.doc_len.len()];
        let mut seen = HashSet::new();
        for token in tokenize(query) {
            let Some(term) = self.terms.get(&token) else {
                continue;
            };
            if !seen.insert(token) {
                continue;
            }
            for &(doc, tf) in &term.postings {
                let norm = K1 * (1.0 - B + B * self.doc_len[doc] / self.avg_len);
                scores[doc] += term.idf * tf * (K1 + 1.0) / (tf + norm);
            }
        }
        Some(scores)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn entry(question: &str, answer: &str, keywords: &[&str]) -> FaqEntry {
        FaqEntry {
            question: question.into(),
            answer: answer.into(),
            keywords: keywords.iter().map(|k| k.to_string()).collect(),
        }
    }

    /// A shop's FAQ in the five supported languages.
    pub(crate) fn shop_faq() -> Vec<FaqEntry> {
        vec![
            /* 0 */
            entry("What are your opening hours?", "We are open Monday to Friday, 9:00-18:00.", &[]),
            /* 1 */
            entry(
                "How much does shipping cost?",
                "Shipping is free for orders over 50 EUR, otherwise 4.90 EUR.",
                &["delivery", "postage"],
            ),
            /* 2 */
            entry(
                "How can I return a product?",
                "You can send any product back within 30 days for a full refund.",
                &["refund"],
            ),
            /* 3 */
            entry("Wie sind Ihre Öffnungszeiten?", "Wir haben Montag bis Freitag von 9 bis 18 Uhr geöffnet.", &[]),
            /* 4 */
            entry("Was kostet der Versand?", "Ab 50 Euro ist der Versand kostenlos, sonst kostet er 4,90 Euro.", &[]),
            /* 5 */
            entry("Koliko košta dostava?", "Dostava je besplatna za narudžbe iznad 50 EUR.", &[]),
            /* 6 */
            entry("Kakvo je vaše radno vrijeme?", "Radimo od ponedjeljka do petka, od 9 do 18 sati.", &[]),
            /* 7 */
            entry("Mogu li platiti pouzećem?", "Da, plaćanje pouzećem je moguće uz naknadu od 2 EUR.", &[]),
            /* 8 */
            entry("营业时间？", "我们周一至周五9点到18点营业。", &[]),
            /* 9 */
            entry("运费是多少？", "订单满50欧元免运费，否则运费4.90欧元。", &[]),
            /* 10 */
            entry(
                "Quels sont vos horaires d'ouverture ?",
                "Nous sommes ouverts du lundi au vendredi, de 9 h à 18 h.",
                &[],
            ),
            /* 11 */
            entry("Quels sont les délais de livraison ?", "La livraison prend deux à trois jours ouvrés.", &[]),
        ]
    }

    fn best(index: &FaqIndex, query: &str) -> Option<usize> {
        index.search(query).map(|(i, _)| i)
    }

    #[test]
    fn english_paraphrase_finds_its_entry() {
        let index = FaqIndex::build(&shop_faq());
        assert_eq!(best(&index, "when are you open"), Some(0));
        assert_eq!(best(&index, "What are your opening hours?"), Some(0));
        assert_eq!(best(&index, "what does delivery cost"), Some(1), "keyword");
        assert_eq!(best(&index, "I'd like a refund"), Some(2));
        assert_eq!(best(&index, "how do I return my products"), Some(2));
    }

    #[test]
    fn german_umlauts_and_transliteration() {
        let index = FaqIndex::build(&shop_faq());
        assert_eq!(best(&index, "öffnungszeiten"), Some(3));
        assert_eq!(best(&index, "ÖFFNUNGSZEITEN"), Some(3));
        assert_eq!(best(&index, "Oeffnungszeiten?"), Some(3));
        assert_eq!(best(&index, "Wann habt ihr geöffnet?"), Some(3));
        assert_eq!(best(&index, "Wie teuer ist der Versand nach Österreich?"), Some(4));
    }

    #[test]
    fn croatian_with_and_without_diacritics() {
        let index = FaqIndex::build(&shop_faq());
        assert_eq!(best(&index, "Koliko košta dostava do Splita?"), Some(5));
        assert_eq!(best(&index, "koliko kosta dostava"), Some(5));
        assert_eq!(best(&index, "radno vrijeme"), Some(6));
        assert_eq!(best(&index, "moze li placanje pouzecem"), Some(7));
    }

    #[test]
    fn chinese_question_finds_chinese_entry() {
        let index = FaqIndex::build(&shop_faq());
        assert_eq!(best(&index, "你们的营业时间是什么"), Some(8));
        assert_eq!(best(&index, "运费多少钱？"), Some(9));
    }

    #[test]
    fn french_with_and_without_accents() {
        let index = FaqIndex::build(&shop_faq());
        assert_eq!(best(&index, "Quels sont les délais de livraison ?"), Some(11));
        assert_eq!(best(&index, "delais de livraison"), Some(11));
        assert_eq!(best(&index, "Combien de temps prend la livraison ?"), Some(11));
        assert_eq!(best(&index, "vos horaires d'ouverture"), Some(10));
    }

    #[test]
    fn unrelated_or_empty_finds_nothing() {
        let index = FaqIndex::build(&shop_faq());
        assert_eq!(index.search("tell me about quantum physics"), None);
        assert_eq!(index.search(""), None);
        assert_eq!(index.search("?!"), None);
        assert_eq!(FaqIndex::build(&[]).search("opening hours"), None);
        assert!(FaqIndex::build(&[]).is_empty());
    }

    #[test]
    fn ties_go_to_the_earlier_entry() {
        let same = entry("Where is the shop?", "Main street 1.", &[]);
        let index = FaqIndex::build(&[entry("Parking?", "Behind the shop.", &[]), same.clone(), same]);
        assert_eq!(best(&index, "where is the shop"), Some(1));
    }

    #[test]
    fn question_outweighs_answer() {
        let index = FaqIndex::build(&[
            entry("Do you ship abroad?", "Yes, we ship to all EU countries and pay the customs.", &[]),
            entry("Who pays the customs?", "We do.", &[]),
        ]);
        assert_eq!(best(&index, "customs"), Some(1));
    }

    /// The default `min_score` of 1.0 must hold: real questions clear it by a margin
    /// whatever the FAQ's size, a word found in every entry of a large FAQ does not.
    #[test]
    fn scores_fit_the_default_threshold() {
        let faq = shop_faq();
        let index = FaqIndex::build(&faq);
        for (query, want) in [
            ("when are you open", 0),
            ("öffnungszeiten", 3),
            ("radno vrijeme", 6),
            ("你们的营业时间是什么", 8),
            ("delais de livraison", 11),
        ] {
            let (i, score) = index.search(query).unwrap();
            assert_eq!(i, want, "{query}");
            assert!(score >= 2.0, "{query}: {score}");
        }

        // One entry: its exact question, and a paraphrase sharing one word.
        let single = FaqIndex::build(&faq[..1]);
        assert!(single.search("What are your opening hours?").unwrap().1 >= 2.0);
        assert!(single.search("when are you open").unwrap().1 >= 1.5);

        // A word in every answer of a 30-entry FAQ is no evidence.
        let many: Vec<_> =
            (0..30).map(|i| entry(&format!("Question topic{i}?"), &format!("Answer {i}, thanks."), &[])).collect();
        let (_, score) = FaqIndex::build(&many).search("thanks").unwrap();
        assert!(score < 1.0, "{score}");
    }

    fn arb_entry() -> impl Strategy<Value = FaqEntry> {
        (any::<String>(), any::<String>(), proptest::collection::vec(any::<String>(), 0..3))
            .prop_map(|(question, answer, keywords)| FaqEntry { question, answer, keywords })
    }

    proptest! {
        #[test]
        fn search_never_panics_and_scores_are_sane(query in any::<String>(), mix in "[a-zA-Zäöüßčćđšž营业时间 ?]{0,40}") {
            let index = FaqIndex::build(&shop_faq());
            for q in [&query, &mix] {
                if let Some((i, score)) = index.search(q) {
                    prop_assert!(i < index.len());
                    prop_assert!(score.is_finite() && score > 0.0, "{score}");
                }
            }
        }

        #[test]
        fn arbitrary_entries_build_and_search(entries in proptest::collection::vec(arb_entry(), 0..6), query in any::<String>()) {
            let index = FaqIndex::build(&entries);
            prop_assert_eq!(index.len(), entries.len());
            for q in [query.as_str(), entries.first().map_or("", |e| e.question.as_str())] {
                if let Some((i, score)) = index.search(q) {
                    prop_assert!(i < entries.len());
                    prop_assert!(score.is_finite() && score >= 0.0, "{score}");
                }
            }
        }
    }
}
