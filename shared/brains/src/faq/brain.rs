//! [`FaqBrain`]: the [`Brain`] behind `brain.kind = "faq"`.

use super::FaqIndex;
use async_trait::async_trait;
use baton_core::agent::{Agent, BrainConfig, FaqEntry};
use baton_core::event::BrainReply;
use baton_core::ports::{Brain, BrainRequest, DeliveryError};
use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, RwLock};

/// Answers from the agent's FAQ entries, or says it does not know (`Unknown { text: None }`:
/// the core then answers in the user's language and counts the unanswered turn).
///
/// Indexes are built on first use and cached per agent, tagged with a fingerprint of the
/// FAQ content: a changed FAQ is re-indexed on its next question, and the cache holds one
/// index per agent, never old versions.
#[derive(Debug, Default)]
pub struct FaqBrain {
    cache: RwLock<HashMap<String, Cached>>,
}

#[derive(Debug)]
struct Cached {
    fingerprint: u64,
    index: Arc<FaqIndex>,
}

impl FaqBrain {
    pub fn new() -> Self {
        Self::default()
    }

    /// The index of `faq` for agent `agent_id`, from the cache when the content is unchanged.
    pub fn index_for(&self, agent_id: &str, faq: &[FaqEntry]) -> Arc<FaqIndex> {
        let fingerprint = fingerprint(faq);
        {
            // A panic elsewhere while holding the lock leaves the map itself intact.
            let cache = self.cache.read().unwrap_or_else(|poisoned| poisoned.into_inner());
            if let Some(hit) = cache.get(agent_id).filter(|c| c.fingerprint == fingerprint) {
                return Arc::clone(&hit.index);
            }
        }
        // Built outside the lock: other agents keep answering meanwhile. Two concurrent
        // misses build twice and the last one stays, which is harmless.
        let index = Arc::new(FaqIndex::build(faq));
        let mut cache = self.cache.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        cache.insert(agent_id.to_string(), Cached { fingerprint, index: Arc::clone(&index) });
        index
    }

    /// The reply to `question` from `faq`, given the agent's `min_score`.
    pub fn reply(&self, agent_id: &str, faq: &[FaqEntry], min_score: f64, question: &str) -> BrainReply {
        let index = self.index_for(agent_id, faq);
        match index.search(question) {
            // `get`: a fingerprint collision must not become an out-of-bounds panic.
            Some((i, score)) if score >= min_score => match faq.get(i) {
                Some(entry) => BrainReply::Answer { text: entry.answer.clone(), buttons: Vec::new() },
                None => BrainReply::Unknown { text: None },
            },
            _ => BrainReply::Unknown { text: None },
        }
    }
}

#[async_trait]
impl Brain for FaqBrain {
    async fn answer(&self, agent: &Agent, request: &BrainRequest) -> Result<BrainReply, DeliveryError> {
        match &agent.brain {
            BrainConfig::Faq { faq, min_score } => Ok(self.reply(&agent.id, faq, *min_score, &request.question)),
            BrainConfig::Llm(_) | BrainConfig::Hosted(_) => {
                Err(DeliveryError::permanent(format!("agent {} does not use the FAQ brain", agent.id)))
            }
        }
    }
}

/// Order-sensitive hash of the FAQ content (entry indexes are what search returns).
fn fingerprint(faq: &[FaqEntry]) -> u64 {
    let mut h = DefaultHasher::new();
    faq.len().hash(&mut h);
    for e in faq {
        e.question.hash(&mut h);
        e.keywords.hash(&mut h);
        e.answer.hash(&mut h);
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faq::tests::{entry, shop_faq};
    use baton_core::agent::{DeskConfig, Policy, WidgetConfig};

    fn agent(id: &str, faq: Vec<FaqEntry>) -> Agent {
        Agent {
            actions: Default::default(),
            api: None,
            id: id.into(),
            name: String::new(),
            language: "en".into(),
            brain: BrainConfig::Faq { faq, min_score: 1.0 },
            desk: DeskConfig::None,
            policy: Policy::default(),
            widget: WidgetConfig::default(),
            messages: Default::default(),
            hours: None,
            fallback: Default::default(),
            channels: Default::default(),
            salesiq: None,
            intercom: None,
            livechat: None,
        }
    }

    fn ask(question: &str) -> BrainRequest {
        BrainRequest {
            params: Default::default(),
            conversation: baton_core::ConversationKey::new("shop", baton_core::Channel::Widget, "u1").unwrap(),
            question: question.into(),
            history: Vec::new(),
            context: None,
            language: "en".into(),
        }
    }

    fn answer(text: &str) -> BrainReply {
        BrainReply::Answer { text: text.into(), buttons: Vec::new() }
    }

    const UNKNOWN: BrainReply = BrainReply::Unknown { text: None };

    #[tokio::test]
    async fn answers_in_every_language_with_default_threshold() {
        let brain = FaqBrain::new();
        let a = agent("shop", shop_faq());
        assert_eq!(BrainConfig::default(), BrainConfig::Faq { faq: vec![], min_score: 1.0 });
        for (question, want) in [
            ("when are you open", "We are open Monday to Friday, 9:00-18:00."),
            ("Öffnungszeiten?", "Wir haben Montag bis Freitag von 9 bis 18 Uhr geöffnet."),
            ("koliko kosta dostava", "Dostava je besplatna za narudžbe iznad 50 EUR."),
            ("你们的营业时间是什么", "我们周一至周五9点到18点营业。"),
            ("delais de livraison", "La livraison prend deux à trois jours ouvrés."),
        ] {
            assert_eq!(brain.answer(&a, &ask(question)).await, Ok(answer(want)), "{question}");
        }
    }

    #[tokio::test]
    async fn unrelated_question_is_unknown() {
        let brain = FaqBrain::new();
        let a = agent("shop", shop_faq());
        assert_eq!(brain.answer(&a, &ask("tell me about quantum physics")).await, Ok(UNKNOWN));
        assert_eq!(brain.answer(&a, &ask("")).await, Ok(UNKNOWN));
    }

    #[tokio::test]
    async fn empty_faq_is_unknown() {
        let brain = FaqBrain::new();
        let a = agent("empty", Vec::new());
        assert_eq!(brain.answer(&a, &ask("What are your opening hours?")).await, Ok(UNKNOWN));
    }

    #[tokio::test]
    async fn below_min_score_is_unknown() {
        let brain = FaqBrain::new();
        let mut a = agent("shop", shop_faq());
        let question = ask("when are you open");
        assert!(matches!(brain.answer(&a, &question).await, Ok(BrainReply::Answer { .. })));
        a.brain = BrainConfig::Faq { faq: shop_faq(), min_score: 100.0 };
        assert_eq!(brain.answer(&a, &question).await, Ok(UNKNOWN));
    }

    #[tokio::test]
    async fn changed_faq_is_reindexed() {
        let brain = FaqBrain::new();
        let question = ask("where do you deliver");
        let before = agent("shop", vec![entry("Do you deliver to Austria?", "Only to Germany.", &[])]);
        assert_eq!(brain.answer(&before, &question).await, Ok(answer("Only to Germany.")));

        let after = agent("shop", vec![entry("Do you deliver to Austria?", "Yes, since May.", &[])]);
        assert_eq!(brain.answer(&after, &question).await, Ok(answer("Yes, since May.")));

        let moved = agent(
            "shop",
            vec![entry("Opening hours?", "9-18.", &[]), entry("Do you deliver to Austria?", "Yes, since May.", &[])],
        );
        assert_eq!(brain.answer(&moved, &question).await, Ok(answer("Yes, since May.")));
        assert_eq!(brain.cache.read().unwrap().len(), 1, "one slot per agent");
    }

    #[test]
    fn cache_is_per_agent_and_per_content() {
        let brain = FaqBrain::new();
        let faq = shop_faq();
        let first = brain.index_for("a", &faq);
        assert!(Arc::ptr_eq(&first, &brain.index_for("a", &faq)), "same content: cached");
        assert!(!Arc::ptr_eq(&first, &brain.index_for("b", &faq)), "other agent: own slot");

        let mut changed = faq.clone();
        changed[0].keywords.push("schedule".into());
        let rebuilt = brain.index_for("a", &changed);
        assert!(!Arc::ptr_eq(&first, &rebuilt), "keywords changed: rebuilt");
        assert_eq!(rebuilt.search("schedule").map(|(i, _)| i), Some(0));

        let mut swapped = faq.clone();
        swapped.swap(0, 1);
        assert_ne!(fingerprint(&faq), fingerprint(&swapped), "order matters");
        let mut moved_word = faq.clone();
        moved_word[0].question.push_str(" x");
        let mut moved_word2 = faq;
        moved_word2[0].keywords.insert(0, "x".into());
        assert_ne!(fingerprint(&moved_word), fingerprint(&moved_word2));
    }

    #[test]
    fn poisoned_lock_is_recovered() {
        let brain = Arc::new(FaqBrain::new());
        let poisoner = Arc::clone(&brain);
        let _ = std::thread::spawn(move || {
            let _guard = poisoner.cache.write().unwrap();
            panic!("poison the cache lock");
        })
        .join();
        assert!(brain.cache.is_poisoned());
        let reply = brain.reply("shop", &shop_faq(), 1.0, "when are you open");
        assert_eq!(reply, answer("We are open Monday to Friday, 9:00-18:00."));
    }
}
