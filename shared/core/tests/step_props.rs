//! Property tests of the session state machine: arbitrary event sequences (including late,
//! duplicated and foreign events) applied one by one, with the state's invariants checked
//! after every step against an independent model of what the shell has been told.

use baton_core::agent::{Agent, BrainConfig, DeskConfig, Policy, WidgetConfig};
use baton_core::messages::{self, MessageKey};
use baton_core::model::{Channel, CloseReason, ConversationKey, Millis, Role, Turn};
use baton_core::session::{ArmedTimer, END_VALUE, HISTORY_CAP, KEEP_WAITING_VALUE};
use baton_core::{step, BrainReply, Effect, Event, EventKind, Ignored, Session, State, Step, TimerKind};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};

const T0: i64 = 1_700_000_000_000;

const TEXTS: &[&str] = &[
    "hello",
    "What are your opening hours?",
    "what does your agent software cost",
    "human",
    "I want to talk to a human please",
    "Mitarbeiter",
    "转人工",
    "end",
    "End chat",
    "stop",
    "bye",
    END_VALUE,
    KEEP_WAITING_VALUE,
    "Keep waiting",
    "Weiter warten",
    "cancel",
    "Abbrechen",
    "jo@example.org",
    "sure, it's anna@mail.example.hr.",
    "my mail is jo at example",
    "",
    "   ",
];

const EMAILS: &[&str] = &["pre@example.com", "bad@", "x@y.io", "not an email"];
const LANGS: &[&str] = &["de", "fr", "xx", "en", "zh"];
const HUMAN_TEXTS: &[&str] = &["Hi, this is Anna.", "Let me check.", "/end"];

const ALL_KEYS: [MessageKey; 18] = [
    MessageKey::AskEmail,
    MessageKey::InvalidEmail,
    MessageKey::HandoffCancelled,
    MessageKey::Waiting,
    MessageKey::HumanJoined,
    MessageKey::WaitTimeoutQuestion,
    MessageKey::KeepWaiting,
    MessageKey::EndRequest,
    MessageKey::KeptWaiting,
    MessageKey::RequestTimedOut,
    MessageKey::UserEnded,
    MessageKey::HumanEnded,
    MessageKey::SessionTimedOut,
    MessageKey::NoDesk,
    MessageKey::DeskFailed,
    MessageKey::NotUnderstood,
    MessageKey::EndChatButton,
    MessageKey::RequestCancelled,
];

fn brain_reply(i: usize) -> BrainReply {
    match i % 5 {
        0 => BrainReply::Answer { text: "We open at 9.".into(), buttons: Vec::new() },
        1 => BrainReply::Unknown { text: None },
        2 => BrainReply::Unknown { text: Some("Hmm, no idea.".into()) },
        3 => BrainReply::Handoff { reason: "the brain decided".into(), text: None },
        _ => BrainReply::Handoff { reason: "the brain decided".into(), text: Some("Let me get a colleague.".into()) },
    }
}

/// Which id an event names: the one the session is busy with, one it produced earlier,
/// or one it never produced.
#[derive(Debug, Clone)]
enum Pick {
    Current,
    Known(Index),
    Random(u8),
}

#[derive(Debug, Clone)]
enum GenPick {
    Armed,
    Earlier(Index),
    Random(u64),
}

#[derive(Debug, Clone)]
enum Op {
    User { text: usize, email: Option<usize>, language: Option<usize> },
    SetEmail(usize),
    UserEnded,
    HandoffRequested,
    Brain(usize),
    BrainFailed,
    DeskOpened { handoff: Pick, desk: Pick },
    DeskOpenFailed { handoff: Pick },
    Human { desk: Pick, text: usize },
    HumanClosed { desk: Pick },
    Timer(GenPick),
}

#[derive(Debug, Clone)]
struct Case {
    channel: Channel,
    policy: Policy,
    desk: bool,
    /// Turns already on the session (to reach the history cap).
    prefill: usize,
    ops: Vec<(Op, u32)>,
}

fn pick() -> impl Strategy<Value = Pick> {
    prop_oneof![
        5 => Just(Pick::Current),
        2 => any::<Index>().prop_map(Pick::Known),
        1 => (0u8..3).prop_map(Pick::Random),
    ]
}

fn gen_pick() -> impl Strategy<Value = GenPick> {
    prop_oneof![
        5 => Just(GenPick::Armed),
        2 => any::<Index>().prop_map(GenPick::Earlier),
        1 => (0u64..40).prop_map(GenPick::Random),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        7 => (
            0..TEXTS.len(),
            proptest::option::weighted(0.15, 0..EMAILS.len()),
            proptest::option::weighted(0.15, 0..LANGS.len()),
        )
            .prop_map(|(text, email, language)| Op::User { text, email, language }),
        1 => (0..EMAILS.len()).prop_map(Op::SetEmail),
        1 => Just(Op::UserEnded),
        1 => Just(Op::HandoffRequested),
        3 => (0usize..5).prop_map(Op::Brain),
        1 => Just(Op::BrainFailed),
        2 => (pick(), pick()).prop_map(|(handoff, desk)| Op::DeskOpened { handoff, desk }),
        1 => pick().prop_map(|handoff| Op::DeskOpenFailed { handoff }),
        4 => (pick(), 0..HUMAN_TEXTS.len()).prop_map(|(desk, text)| Op::Human { desk, text }),
        1 => pick().prop_map(|desk| Op::HumanClosed { desk }),
        3 => gen_pick().prop_map(Op::Timer),
    ]
}

fn policy() -> impl Strategy<Value = Policy> {
    (0usize..=12, 0u32..=3, any::<bool>(), prop_oneof![Just((60u64, 60u64, 180u64)), (1u64..300, 1u64..300, 1u64..300)])
        .prop_map(|(history_messages, max_unanswered, require_email, (w, wr, s))| Policy {
            wait_timeout_secs: w,
            wait_reply_timeout_secs: wr,
            session_timeout_secs: s,
            history_messages,
            require_email,
            max_unanswered,
            ..Policy::default()
        })
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop_oneof![Just(Channel::Widget), Just(Channel::Telegram), Just(Channel::Api)],
        policy(),
        prop::bool::weighted(0.9),
        prop_oneof![3 => Just(0usize), 1 => 90usize..=100],
        prop::collection::vec((op(), prop_oneof![Just(0u32), 1u32..=200]), 1..=40),
    )
        .prop_map(|(channel, policy, desk, prefill, ops)| Case { channel, policy, desk, prefill, ops })
}

fn agent(case: &Case) -> Agent {
    Agent {
        actions: Default::default(),
        api: None,
        id: "demo".into(),
        name: String::new(),
        language: "en".into(),
        brain: BrainConfig::default(),
        desk: if case.desk {
            DeskConfig::Webhook {
                url: "http://127.0.0.1:9/desk".into(),
                username: None,
                password: None,
                signing_secret: None,
            }
        } else {
            DeskConfig::None
        },
        policy: case.policy.clone(),
        channels: Default::default(),
        salesiq: None,
        intercom: None,
        livechat: None,
        widget: WidgetConfig::default(),
        messages: Default::default(),
        hours: None,
        fallback: Default::default(),
    }
}

fn initial_session(case: &Case) -> Session {
    let key = ConversationKey::new("demo", case.channel, "user-1").unwrap();
    let mut s = Session::new(key);
    s.history = (0..case.prefill)
        .map(|i| Turn {
            role: match i % 7 {
                6 => Role::System,
                n if n % 2 == 0 => Role::User,
                _ => Role::Bot,
            },
            text: format!("old turn {i}"),
            at: Millis(T0 - 1_000_000 + i as i64),
        })
        .collect();
    s
}

fn handoff_of(state: &State) -> Option<&baton_core::session::Handoff> {
    match state {
        State::WaitingForHuman { handoff, .. } | State::WithHuman { handoff, .. } => Some(handoff),
        _ => None,
    }
}

fn desk_of(state: &State) -> Option<&str> {
    match state {
        State::WaitingForHuman { desk_conversation_id, .. } => desk_conversation_id.as_deref(),
        State::WithHuman { desk_conversation_id, .. } => Some(desk_conversation_id),
        _ => None,
    }
}

/// What the shell has been told so far, rebuilt from the effects alone.
#[derive(Debug, Default)]
struct Model {
    /// The handoff of the last `OpenDesk`, until the session returns to the bot.
    active: Option<String>,
    handoff_ids: Vec<String>,
    desk_ids: Vec<String>,
    /// The timer as the shell's timer service sees it.
    timer: Option<ArmedTimer>,
    generations: Vec<u64>,
    /// States reached (for the coverage check).
    reached: [usize; 4],
    human_relays: usize,
    duplicates_checked: usize,
}

fn resolve_handoff(p: &Pick, s: &Session, m: &Model) -> String {
    match p {
        Pick::Current => handoff_of(&s.state)
            .map(|h| h.id.clone())
            .or_else(|| m.handoff_ids.last().cloned())
            .unwrap_or_else(|| "ho_none".into()),
        Pick::Known(i) if !m.handoff_ids.is_empty() => i.get(&m.handoff_ids).clone(),
        Pick::Known(_) => "ho_unknown".into(),
        Pick::Random(n) => format!("ho_random{n}"),
    }
}

/// Desk ids: desks name their conversation `desk-{handoff}` here, or (before `DeskOpened`)
/// a human may reply under the handoff id itself.
fn resolve_desk(p: &Pick, s: &Session, m: &Model, opening: bool) -> String {
    match p {
        Pick::Current if opening => format!("desk-{}", resolve_handoff(p, s, m)),
        Pick::Current => desk_of(&s.state)
            .map(str::to_string)
            .or_else(|| handoff_of(&s.state).map(|h| h.id.clone()))
            .or_else(|| m.desk_ids.last().cloned())
            .unwrap_or_else(|| "desk-none".into()),
        Pick::Known(i) => {
            let mut pool: Vec<String> = m.desk_ids.clone();
            pool.extend(m.handoff_ids.iter().cloned());
            if pool.is_empty() {
                "desk-unknown".into()
            } else {
                i.get(&pool).clone()
            }
        }
        Pick::Random(n) => format!("desk-random{n}"),
    }
}

fn event_kind(op: &Op, s: &Session, m: &Model) -> EventKind {
    match op {
        Op::User { text, email, language } => EventKind::UserMessage {
            text: TEXTS[*text].into(),
            email: email.map(|i| EMAILS[i].to_string()),
            language: language.map(|i| LANGS[i].to_string()),
            reply: None,
            name: None,
        },
        Op::SetEmail(i) => EventKind::UserSetEmail { email: EMAILS[*i].into() },
        Op::UserEnded => EventKind::UserEnded,
        Op::HandoffRequested => EventKind::HandoffRequested { reason: "rule".into() },
        Op::Brain(i) => EventKind::BrainReplied { reply: brain_reply(*i) },
        Op::BrainFailed => EventKind::BrainFailed { error: "down".into() },
        Op::DeskOpened { handoff, desk } => EventKind::DeskOpened {
            handoff_id: resolve_handoff(handoff, s, m),
            desk_conversation_id: resolve_desk(desk, s, m, true),
        },
        Op::DeskOpenFailed { handoff } => {
            EventKind::DeskOpenFailed { handoff_id: resolve_handoff(handoff, s, m), error: "refused".into() }
        }
        Op::Human { desk, text } => EventKind::HumanMessage {
            desk_conversation_id: resolve_desk(desk, s, m, false),
            text: HUMAN_TEXTS[*text].into(),
        },
        Op::HumanClosed { desk } => EventKind::HumanClosed { desk_conversation_id: resolve_desk(desk, s, m, false) },
        Op::Timer(g) => EventKind::TimerFired {
            generation: match g {
                GenPick::Armed => s.timer.map_or(0, |t| t.generation),
                GenPick::Earlier(i) if !m.generations.is_empty() => *i.get(&m.generations),
                GenPick::Earlier(_) => 0,
                GenPick::Random(n) => *n,
            },
        },
    }
}

fn timeout_secs(policy: &Policy, kind: TimerKind) -> u64 {
    match kind {
        TimerKind::Wait => policy.wait_timeout_secs,
        TimerKind::WaitReply => policy.wait_reply_timeout_secs,
        TimerKind::Session => policy.session_timeout_secs,
    }
}

fn is_window_of(window: &[Turn], history: &[Turn]) -> bool {
    let filtered: Vec<&Turn> = history.iter().filter(|t| t.role != Role::System).collect();
    window.is_empty() || filtered.windows(window.len()).any(|w| w.iter().zip(window).all(|(a, b)| *a == b))
}

/// A session for failure messages: everything but the older turns.
fn brief(s: &Session) -> String {
    let tail = &s.history[s.history.len().saturating_sub(4)..];
    format!(
        "{:?} email={:?} language={:?} timer={:?} next_gen={} unanswered={} summary={:?} history({})=..{:?}",
        s.state,
        s.email,
        s.language,
        s.timer,
        s.next_timer_generation,
        s.unanswered,
        s.summary,
        s.history.len(),
        tail
    )
}

fn state_index(s: &State) -> usize {
    match s {
        State::Bot => 0,
        State::CollectingEmail { .. } => 1,
        State::WaitingForHuman { .. } => 2,
        State::WithHuman { .. } => 3,
    }
}

/// Checks of one applied event. `prev` is the stored session, `out` what `step` returned.
fn check_applied(prev: &Session, event: &Event, now: Millis, agent: &Agent, out: &Step, m: &mut Model) {
    let s = &out.session;
    let fx = &out.effects;
    let policy = &agent.policy;
    let ctx = || format!("event {:?}\nprev {}\nnext {}\neffects {:?}", event.kind, brief(prev), brief(s), fx);

    assert_eq!(s.updated_at, now, "{}", ctx());
    assert!(s.history.len() <= HISTORY_CAP, "{}", ctx());
    assert_eq!(s.key, prev.key);

    if let EventKind::UserMessage { language: Some(l), .. } = &event.kind {
        if messages::LANGUAGES.contains(&l.as_str()) {
            assert_eq!(s.language.as_deref(), Some(l.as_str()), "{}", ctx());
        }
    }

    // ---- allowed transitions
    let (p, n) = (&prev.state, &s.state);
    match (p, n) {
        (State::WaitingForHuman { .. } | State::WithHuman { .. }, State::CollectingEmail { .. }) => {
            panic!("a handoff in progress went back to e-mail collection\n{}", ctx())
        }
        (State::WithHuman { .. }, State::WaitingForHuman { .. }) => panic!("WithHuman went back to waiting\n{}", ctx()),
        (
            State::WaitingForHuman { .. } | State::WithHuman { .. },
            State::WaitingForHuman { .. } | State::WithHuman { .. },
        ) => {
            assert_eq!(handoff_of(p), handoff_of(n), "the handoff changed mid-way\n{}", ctx());
        }
        _ => {}
    }
    if let (Some(d), State::WithHuman { desk_conversation_id, .. }) = (desk_of(p), n) {
        assert_eq!(d, desk_conversation_id, "{}", ctx());
    }
    if let State::WithHuman { human_messages, .. } = n {
        let before = match p {
            State::WithHuman { human_messages, .. } => *human_messages,
            _ => 0,
        };
        let expected = before + u32::from(matches!(event.kind, EventKind::HumanMessage { .. }));
        assert_eq!(*human_messages, expected, "{}", ctx());
        assert!(*human_messages >= 1);
    }
    if matches!(p, State::WaitingForHuman { .. } | State::WithHuman { .. }) && *n == State::Bot {
        assert!(s.summary.is_some(), "{}", ctx());
    }

    // ---- the handoff as the desk has been told
    let prev_active = m.active.clone();
    if let EventKind::DeskOpened { desk_conversation_id, .. } = &event.kind {
        assert_eq!(desk_of(n), Some(desk_conversation_id.as_str()), "{}", ctx());
        m.desk_ids.push(desk_conversation_id.clone());
    }
    let opens: Vec<_> = fx
        .iter()
        .filter_map(|e| match e {
            Effect::OpenDesk { request } => Some(request),
            _ => None,
        })
        .collect();
    assert!(opens.len() <= 1, "{}", ctx());
    if let Some(req) = opens.first() {
        assert!(matches!(p, State::Bot | State::CollectingEmail { .. }), "{}", ctx());
        match n {
            State::WaitingForHuman { handoff, desk_conversation_id: None, asked_to_keep_waiting: false } => {
                assert_eq!(handoff.id, req.handoff_id, "{}", ctx())
            }
            _ => panic!("OpenDesk without waiting for a human\n{}", ctx()),
        }
        assert!(!m.handoff_ids.contains(&req.handoff_id), "handoff id reused\n{}", ctx());
        m.handoff_ids.push(req.handoff_id.clone());
        m.active = Some(req.handoff_id.clone());

        assert!(req.history.len() <= policy.history_messages, "{}", ctx());
        assert!(req.history.iter().all(|t| t.role != Role::System), "{}", ctx());
        // The turns before the question: when the question is the newest turn, it is not
        // repeated in the history.
        let newest_is_question = s.history.last().is_some_and(|t| t.role == Role::User && t.text == req.question);
        let before = if newest_is_question { &s.history[..s.history.len() - 1] } else { &s.history[..] };
        assert!(is_window_of(&req.history, before), "{}", ctx());
        let expected_len = before.iter().filter(|t| t.role != Role::System).count().min(policy.history_messages);
        assert_eq!(req.history.len(), expected_len, "{}", ctx());
        assert!(baton_core::email::is_valid(&req.email), "{}", ctx());
        let expected_email = s.email.clone().unwrap_or_else(|| policy.default_email.clone());
        assert_eq!(req.email, expected_email, "{}", ctx());
        if policy.require_email && s.key.channel.collects_email() {
            assert!(s.email.is_some(), "a widget handoff without an e-mail\n{}", ctx());
        }
        if let State::CollectingEmail { question, reason } = p {
            assert_eq!((&req.question, &req.reason), (question, reason), "{}", ctx());
        }
    } else if matches!(n, State::Bot | State::CollectingEmail { .. }) {
        m.active = None;
    }
    assert_eq!(handoff_of(n).map(|h| h.id.clone()), m.active, "state and active handoff disagree\n{}", ctx());
    if matches!(n, State::CollectingEmail { .. }) {
        assert!(s.email.is_none() || !matches!(p, State::Bot), "{}", ctx());
    }

    let closes: Vec<_> = fx
        .iter()
        .filter_map(|e| match e {
            Effect::CloseDesk { handoff_id, reason } => Some((handoff_id, *reason)),
            _ => None,
        })
        .collect();
    assert!(closes.len() <= 1, "{}", ctx());
    if let Some((id, reason)) = closes.first() {
        assert_eq!(Some(*id), prev_active.as_ref(), "{}", ctx());
        assert_eq!(*n, State::Bot, "{}", ctx());
        let timeout = matches!(event.kind, EventKind::TimerFired { .. });
        assert_eq!(*reason, if timeout { CloseReason::Timeout } else { CloseReason::UserClosed }, "{}", ctx());
    }
    for e in fx {
        if let Effect::PostToDesk { handoff_id, text } = e {
            assert_eq!(Some(handoff_id), prev_active.as_ref(), "{}", ctx());
            assert_eq!(handoff_of(n).map(|h| &h.id), Some(handoff_id), "{}", ctx());
            let EventKind::UserMessage { text: sent, .. } = &event.kind else {
                panic!("PostToDesk for a non-user event\n{}", ctx())
            };
            assert_eq!(text, sent, "{}", ctx());
            assert!(text != END_VALUE && text != KEEP_WAITING_VALUE, "button value relayed\n{}", ctx());
        }
    }

    // ---- messages to the user
    let lang = s.language.clone().unwrap_or_else(|| agent.language.clone());
    for e in fx {
        let Effect::SendToUser { message, .. } = e else { continue };
        match message.from {
            Role::Human => {
                m.human_relays += 1;
                assert!(matches!(n, State::WithHuman { .. }), "human relayed outside WithHuman\n{}", ctx());
                let EventKind::HumanMessage { text, .. } = &event.kind else {
                    panic!("human relay without a human message\n{}", ctx())
                };
                assert_eq!(&message.text, text, "{}", ctx());
                assert!(message.buttons.iter().any(|b| b.value == END_VALUE), "{}", ctx());
            }
            Role::Bot => {
                // The brain's answers, or the prompts of the e-mail step, which speak as the bot.
                let prompt = [MessageKey::AskEmail, MessageKey::InvalidEmail, MessageKey::HandoffCancelled]
                    .iter()
                    .any(|k| messages::text(&agent.messages, &lang, *k) == message.text);
                if !prompt {
                    assert_eq!(*p, State::Bot, "{}", ctx());
                    assert!(matches!(event.kind, EventKind::BrainReplied { .. }), "{}", ctx());
                }
            }
            Role::System => {
                let known = ALL_KEYS.iter().any(|k| messages::text(&agent.messages, &lang, *k) == message.text);
                assert!(known, "system message not in {lang}: {:?}\n{}", message.text, ctx());
            }
            Role::User => panic!("a message from the user to the user\n{}", ctx()),
        }
    }
    for e in fx {
        if let Effect::AskBrain { question, history, language, context, .. } = e {
            assert_eq!(*n, State::Bot, "{}", ctx());
            let EventKind::UserMessage { text, .. } = &event.kind else {
                panic!("AskBrain for a non-user event\n{}", ctx())
            };
            assert_eq!(question, text, "{}", ctx());
            assert!(question != END_VALUE && question != KEEP_WAITING_VALUE, "{}", ctx());
            assert_eq!(*language, lang, "{}", ctx());
            assert_eq!(*context, s.summary, "{}", ctx());
            assert!(history.len() <= policy.history_messages, "{}", ctx());
            assert!(history.iter().all(|t| t.role != Role::System), "{}", ctx());
            let newest = s.history.last().expect("the question is on the history");
            assert_eq!((newest.role, &newest.text), (Role::User, question), "{}", ctx());
            assert!(is_window_of(history, &s.history[..s.history.len() - 1]), "{}", ctx());
        }
    }

    // ---- the timer as the shell's timer service sees it
    if let EventKind::TimerFired { generation } = event.kind {
        assert_eq!(
            prev.timer.map(|t| t.generation),
            Some(generation),
            "a timer other than the armed one was acted on\n{}",
            ctx()
        );
        if m.timer.map(|t| t.generation) == Some(generation) {
            m.timer = None;
        }
    }
    for e in fx {
        match e {
            Effect::ScheduleTimer { generation, due, kind } => {
                assert!(m.generations.iter().all(|g| g < generation), "timer generation reused\n{}", ctx());
                assert_eq!(*due, now.plus_secs(timeout_secs(policy, *kind)), "{}", ctx());
                m.generations.push(*generation);
                m.timer = Some(ArmedTimer { generation: *generation, kind: *kind, due: *due });
            }
            Effect::CancelTimer => {
                assert!(m.timer.is_some(), "cancelled a timer that was not armed\n{}", ctx());
                m.timer = None;
            }
            _ => {}
        }
    }
    assert_eq!(m.timer, s.timer, "the shell's timer and the session's disagree\n{}", ctx());
    if let Some(t) = s.timer {
        assert!(s.next_timer_generation > t.generation, "{}", ctx());
    }

    // ---- the timer per state
    match n {
        State::Bot | State::CollectingEmail { .. } => assert_eq!(s.timer, None, "{}", ctx()),
        State::WaitingForHuman { asked_to_keep_waiting, .. } => {
            let kind = s.timer.map(|t| t.kind);
            let expected = if *asked_to_keep_waiting { TimerKind::WaitReply } else { TimerKind::Wait };
            assert_eq!(kind, Some(expected), "{}", ctx());
        }
        State::WithHuman { .. } => {
            // Armed after each human message, stopped by the user's reply.
            let human_spoke_last = s.history.last().is_some_and(|t| t.role == Role::Human);
            assert_eq!(s.timer.map(|t| t.kind), human_spoke_last.then_some(TimerKind::Session), "{}", ctx());
        }
    }
}

/// Checks of an ignored event.
fn check_ignored(prev: &Session, event: &Event, ignored: &Ignored) {
    let ctx = || format!("event {:?} ignored as {ignored:?}\nsession {}", event.kind, brief(prev));
    let blank = matches!(&event.kind, EventKind::UserMessage { text, .. } if text.trim().is_empty());
    assert_eq!(blank, *ignored == Ignored::EmptyMessage, "{}", ctx());
    let fits = match ignored {
        Ignored::EmptyMessage => true,
        Ignored::InvalidEmail => {
            matches!(&event.kind, EventKind::UserSetEmail { email } if !baton_core::email::is_valid(email))
        }
        Ignored::StaleTimer => {
            matches!(event.kind, EventKind::TimerFired { .. })
                || matches!(&event.kind, EventKind::UserMessage { text, .. } if text.trim() == KEEP_WAITING_VALUE)
                    && matches!(prev.state, State::WithHuman { .. })
        }
        Ignored::LateBrainReply => {
            matches!(event.kind, EventKind::BrainReplied { .. } | EventKind::BrainFailed { .. })
                && prev.state != State::Bot
        }
        Ignored::StaleHandoff => matches!(
            event.kind,
            EventKind::DeskOpened { .. }
                | EventKind::DeskOpenFailed { .. }
                | EventKind::HumanMessage { .. }
                | EventKind::HumanClosed { .. }
        ),
        Ignored::NoActiveHandoff => {
            handoff_of(&prev.state).is_none()
                && (matches!(&event.kind, EventKind::HumanMessage { .. } | EventKind::HumanClosed { .. })
                    || matches!(&event.kind, EventKind::UserMessage { text, .. } if text.trim() == KEEP_WAITING_VALUE))
        }
        Ignored::NothingToEnd => {
            prev.state == State::Bot
                && (event.kind == EventKind::UserEnded
                    || matches!(&event.kind, EventKind::UserMessage { text, .. } if text.trim() == END_VALUE))
        }
        Ignored::AlreadyHandedOff => {
            matches!(event.kind, EventKind::HandoffRequested { .. }) && prev.state != State::Bot
        }
    };
    assert!(fits, "{}", ctx());

    // Events that must apply are never dropped.
    match &event.kind {
        EventKind::TimerFired { generation } => {
            assert_ne!(prev.timer.map(|t| t.generation), Some(*generation), "{}", ctx())
        }
        EventKind::HumanMessage { desk_conversation_id, .. } | EventKind::HumanClosed { desk_conversation_id } => {
            if let Some(h) = handoff_of(&prev.state) {
                let own = desk_of(&prev.state).unwrap_or(&h.id);
                assert_ne!(own, desk_conversation_id, "{}", ctx());
            }
        }
        EventKind::DeskOpened { handoff_id, .. } => {
            if let State::WaitingForHuman { handoff, desk_conversation_id: None, .. } = &prev.state {
                assert_ne!(&handoff.id, handoff_id, "{}", ctx());
            }
        }
        EventKind::BrainReplied { .. } | EventKind::BrainFailed { .. } => {
            assert_ne!(prev.state, State::Bot, "{}", ctx())
        }
        _ => {}
    }
}

/// Apply the case's events with increasing `now`, checking every step. Returns the trace.
fn run(case: &Case) -> (Vec<Result<Step, Ignored>>, Model) {
    let mut model = Model::default();
    let m = &mut model;
    let agent = agent(case);
    let mut session = initial_session(case);
    let mut now = Millis(T0);
    let mut trace = Vec::new();
    for (i, (op, advance)) in case.ops.iter().enumerate() {
        now = Millis(now.0 + i64::from(*advance) * 1000);
        let kind = event_kind(op, &session, m);
        let event = Event::new(format!("ev:{i}"), session.key.clone(), now, kind);
        let result = step(&session, &event, now, &agent);
        // Determinism: the same input gives the same output.
        assert_eq!(result, step(&session, &event, now, &agent));
        match result {
            Ok(out) => {
                check_applied(&session, &event, now, &agent, &out, m);
                // A redelivered DeskOpened or TimerFired (under another event id, a little
                // later) is recognised as stale.
                let again = Event::new(format!("ev:{i}:again"), session.key.clone(), now, event.kind.clone());
                let later = Millis(now.0 + 1000);
                match &event.kind {
                    EventKind::DeskOpened { .. } => {
                        m.duplicates_checked += 1;
                        assert_eq!(step(&out.session, &again, later, &agent), Err(Ignored::StaleHandoff));
                    }
                    EventKind::TimerFired { .. } => {
                        m.duplicates_checked += 1;
                        assert_eq!(step(&out.session, &again, later, &agent), Err(Ignored::StaleTimer));
                    }
                    _ => {}
                }
                session = out.session.clone();
                m.reached[state_index(&session.state)] += 1;
                trace.push(Ok(out));
            }
            Err(ignored) => {
                // Nothing to apply: the stored session stays as it was.
                check_ignored(&session, &event, &ignored);
                trace.push(Err(ignored));
            }
        }
    }
    (trace, model)
}

proptest! {
    #![proptest_config(Config { cases: 512, ..Config::default() })]

    #[test]
    fn invariants_hold_for_arbitrary_event_sequences(case in case()) {
        run(&case);
    }

    #[test]
    fn replaying_a_sequence_gives_the_same_trace(case in case()) {
        let (first, _) = run(&case);
        let (second, _) = run(&case);
        prop_assert_eq!(first, second);
    }
}

// Direct duplicate checks: drive to the point where a DeskOpened or a timer applies, then
// deliver it twice.
proptest! {
    #[test]
    fn duplicate_desk_opened_and_timer_fired_are_ignored(
        ops in prop::collection::vec(op(), 0..20),
        channel in prop_oneof![Just(Channel::Widget), Just(Channel::Telegram)],
    ) {
        let case = Case { channel, policy: Policy::default(), desk: true, prefill: 0, ops: vec![] };
        let agent = agent(&case);
        let mut s = initial_session(&case);
        let mut m = Model::default();
        let mut now = Millis(T0);
        for (i, op) in ops.iter().enumerate() {
            now = Millis(now.0 + 7_000);
            let ev = Event::new(format!("ev:{i}"), s.key.clone(), now, event_kind(op, &s, &m));
            if let Ok(out) = step(&s, &ev, now, &agent) {
                for e in &out.effects {
                    if let Effect::OpenDesk { request } = e {
                        m.handoff_ids.push(request.handoff_id.clone());
                    }
                }
                s = out.session;
            }
        }
        if let Some(h) = handoff_of(&s.state).cloned() {
            let key = s.key.clone();
            if let Some(armed) = s.timer {
                let fire = EventKind::TimerFired { generation: armed.generation };
                let first = step(&s, &Event::new("t:1", key.clone(), now, fire.clone()), now, &agent).unwrap();
                prop_assert_eq!(
                    step(&first.session, &Event::new("t:1", key.clone(), now, fire.clone()), now, &agent),
                    Err(Ignored::StaleTimer)
                );
            } else {
                // Only a user reply to the human stops the timer.
                let with_human = matches!(s.state, State::WithHuman { .. });
                prop_assert!(with_human, "no timer while waiting: {:?}", s);
            }
            if let State::WaitingForHuman { desk_conversation_id: None, .. } = s.state {
                let open = EventKind::DeskOpened { handoff_id: h.id.clone(), desk_conversation_id: "d-1".into() };
                let first = step(&s, &Event::new("d:1", key.clone(), now, open.clone()), now, &agent).unwrap();
                prop_assert_eq!(
                    step(&first.session, &Event::new("d:1", key.clone(), now, open.clone()), now, &agent),
                    Err(Ignored::StaleHandoff)
                );
                // And with a different desk conversation id too.
                let other = EventKind::DeskOpened { handoff_id: h.id.clone(), desk_conversation_id: "d-2".into() };
                prop_assert_eq!(
                    step(&first.session, &Event::new("d:2", key, now, other), now, &agent),
                    Err(Ignored::StaleHandoff)
                );
            }
        }
    }
}

/// The generator must actually reach every state, relay humans and exercise redelivery;
/// otherwise the properties above would pass vacuously.
#[test]
fn the_generator_reaches_every_state() {
    let mut runner = TestRunner::deterministic();
    let strategy = case();
    let (mut reached, mut relays, mut duplicates, mut handoffs) = ([0; 4], 0, 0, 0);
    for _ in 0..300 {
        let case = strategy.new_tree(&mut runner).unwrap().current();
        let (_, m) = run(&case);
        for (total, n) in reached.iter_mut().zip(m.reached) {
            *total += n;
        }
        relays += m.human_relays;
        duplicates += m.duplicates_checked;
        handoffs += m.handoff_ids.len();
    }
    eprintln!("states {reached:?}, human relays {relays}, duplicates {duplicates}, handoffs {handoffs}");
    assert!(reached.iter().all(|n| *n > 20), "states reached: {reached:?}");
    assert!(relays > 20, "{relays}");
    assert!(duplicates > 50, "{duplicates}");
    assert!(handoffs > 50, "{handoffs}");
}
