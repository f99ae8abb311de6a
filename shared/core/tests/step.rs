//! Transition tests of the session state machine (`baton_core::step`), through the public API.
//! The product rules come from seed 004: wait 60 s for the first human reply, then ask the
//! user to end or keep waiting; end the human session 180 s after the human's last message
//! without a user reply; ask for an e-mail before a handoff on the widget; transfer the last
//! N messages plus the current question; the session is official once the human replies;
//! both sides can end it.

use baton_core::agent::{Agent, BrainConfig, DeskConfig, Policy, WidgetConfig};
use baton_core::event::ReplyHandle;
use baton_core::messages::{self, MessageKey};
use baton_core::model::{Button, Channel, CloseReason, ConversationKey, Millis, OutMessage, Role, Turn};
use baton_core::session::{Handoff, HandoffMode, END_VALUE, HISTORY_CAP, KEEP_WAITING_VALUE};
use baton_core::{step, BrainReply, Effect, Event, EventKind, HandoffRequest, Ignored, Session, State, TimerKind};

const T0: i64 = 1_700_000_000_000;

fn agent() -> Agent {
    Agent {
        actions: Default::default(),
        api: None,
        id: "demo".into(),
        name: "Demo".into(),
        language: "en".into(),
        brain: BrainConfig::default(),
        desk: DeskConfig::Webhook {
            url: "http://127.0.0.1:9/desk".into(),
            username: None,
            password: None,
            signing_secret: None,
        },
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

fn en(key: MessageKey) -> String {
    messages::default_text("en", key).to_string()
}

fn de(key: MessageKey) -> String {
    messages::default_text("de", key).to_string()
}

fn system(text: String) -> Effect {
    Effect::SendToUser { message: OutMessage::new(Role::System, text), reply_token: None, outside_window: false }
}

fn bot(text: String) -> Effect {
    Effect::SendToUser { message: OutMessage::new(Role::Bot, text), reply_token: None, outside_window: false }
}

/// The "connecting you" notice, with its "End request" button.
fn waiting_with(text: String, lang: &str) -> Effect {
    Effect::SendToUser {
        message: OutMessage {
            from: Role::System,
            text,
            buttons: vec![Button {
                label: messages::default_text(lang, MessageKey::EndRequest).to_string(),
                value: END_VALUE.into(),
            }],
            escalation: None,
        },
        reply_token: None,
        outside_window: false,
    }
}

fn waiting(lang: &str) -> Effect {
    waiting_with(messages::default_text(lang, MessageKey::Waiting).to_string(), lang)
}

fn user(text: &str) -> EventKind {
    EventKind::UserMessage { text: text.into(), email: None, language: None, reply: None, name: None }
}

fn answer(text: &str) -> EventKind {
    EventKind::BrainReplied { reply: BrainReply::Answer { text: text.into(), buttons: Vec::new() } }
}

fn unknown() -> EventKind {
    EventKind::BrainReplied { reply: BrainReply::Unknown { text: None } }
}

fn timer(generation: u64) -> EventKind {
    EventKind::TimerFired { generation }
}

fn desk_opened(handoff_id: &str, desk: &str) -> EventKind {
    EventKind::DeskOpened { handoff_id: handoff_id.into(), desk_conversation_id: desk.into() }
}

fn human(desk: &str, text: &str) -> EventKind {
    EventKind::HumanMessage { desk_conversation_id: desk.into(), text: text.into() }
}

/// A conversation driven event by event, the way the worker drives it: a step that is
/// ignored leaves the stored session as it was.
struct Sim {
    agent: Agent,
    session: Session,
    now: Millis,
    seq: u32,
}

impl Sim {
    fn new(channel: Channel) -> Sim {
        Sim::with_agent(channel, agent())
    }

    fn with_agent(channel: Channel, agent: Agent) -> Sim {
        let key = ConversationKey::new("demo", channel, "user-1").unwrap();
        Sim { agent, session: Session::new(key), now: Millis(T0), seq: 0 }
    }

    fn advance(&mut self, secs: i64) {
        self.now = Millis(self.now.0 + secs * 1000);
    }

    fn try_apply(&mut self, kind: EventKind) -> Result<Vec<Effect>, Ignored> {
        self.seq += 1;
        let event = Event::new(format!("test:{}", self.seq), self.session.key.clone(), self.now, kind);
        let out = step(&self.session, &event, self.now, &self.agent)?;
        assert_eq!(out.session.updated_at, self.now);
        self.session = out.session;
        Ok(out.effects)
    }

    #[track_caller]
    fn apply(&mut self, kind: EventKind) -> Vec<Effect> {
        match self.try_apply(kind.clone()) {
            Ok(fx) => fx,
            Err(e) => panic!("{} was ignored in state {}: {e:?}", kind.name(), self.session.state.name()),
        }
    }

    /// Apply an event that must be ignored, and check that the session is untouched.
    #[track_caller]
    fn ignored(&mut self, kind: EventKind) -> Ignored {
        let before = self.session.clone();
        match self.try_apply(kind) {
            Ok(fx) => panic!("expected the event to be ignored, got {fx:?}"),
            Err(e) => {
                assert_eq!(self.session, before);
                e
            }
        }
    }

    fn handoff(&self) -> Handoff {
        match &self.session.state {
            State::WaitingForHuman { handoff, .. } | State::WithHuman { handoff, .. } => handoff.clone(),
            other => panic!("no active handoff in {other:?}"),
        }
    }

    fn generation(&self) -> u64 {
        self.session.timer.expect("a timer should be armed").generation
    }

    /// Telegram (no e-mail step) up to an opened desk conversation `desk`.
    fn waiting(channel: Channel, desk: &str) -> Sim {
        let mut sim = Sim::new(channel);
        sim.session.email = Some("jo@example.org".into());
        sim.apply(user("human"));
        let id = sim.handoff().id;
        sim.apply(desk_opened(&id, desk));
        sim
    }

    /// Up to a session with a human who wrote one message.
    fn with_human() -> Sim {
        let mut sim = Sim::waiting(Channel::Telegram, "conv-1");
        sim.advance(5);
        sim.apply(human("conv-1", "Hi, this is Anna."));
        sim
    }
}

fn open_desk(fx: &[Effect]) -> HandoffRequest {
    let found: Vec<_> = fx
        .iter()
        .filter_map(|e| match e {
            Effect::OpenDesk { request } => Some(request.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(found.len(), 1, "expected one OpenDesk in {fx:?}");
    found.into_iter().next().unwrap()
}

fn schedules(fx: &[Effect]) -> Vec<(u64, Millis, TimerKind)> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::ScheduleTimer { generation, due, kind } => Some((*generation, *due, *kind)),
            _ => None,
        })
        .collect()
}

fn sent(fx: &[Effect]) -> Vec<OutMessage> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::SendToUser { message, .. } => Some(message.clone()),
            _ => None,
        })
        .collect()
}

fn turn(role: Role, text: &str, at: i64) -> Turn {
    Turn { role, text: text.into(), at: Millis(at) }
}

// ---------------------------------------------------------------- Bot

#[test]
fn bot_user_message_asks_the_brain_with_the_previous_history() {
    let mut sim = Sim::new(Channel::Widget);
    let fx = sim.apply(user("hi"));
    assert_eq!(
        fx,
        vec![Effect::AskBrain {
            params: Default::default(),
            question: "hi".into(),
            history: vec![],
            context: None,
            language: "en".into()
        }]
    );
    sim.advance(1);
    sim.apply(answer("Hello! How can I help?"));
    sim.advance(1);
    let before = sim.session.clone();
    let fx = sim.apply(user("What are your opening hours?"));
    assert_eq!(
        fx,
        vec![Effect::AskBrain {
            params: Default::default(),
            question: "What are your opening hours?".into(),
            history: vec![turn(Role::User, "hi", T0), turn(Role::Bot, "Hello! How can I help?", T0 + 1000),],
            context: None,
            language: "en".into(),
        }]
    );
    assert_eq!(sim.session.state, State::Bot);
    assert_eq!(sim.session.timer, None);
    assert_eq!(sim.session.history.len(), before.history.len() + 1);
    assert_eq!(sim.session.history.last(), Some(&turn(Role::User, "What are your opening hours?", T0 + 2000)));
}

#[test]
fn ask_brain_history_is_limited_to_the_last_n_turns() {
    let mut a = agent();
    a.policy.history_messages = 3;
    let mut sim = Sim::with_agent(Channel::Widget, a);
    for i in 0..5 {
        sim.apply(user(&format!("question {i}")));
        sim.apply(answer(&format!("answer {i}")));
    }
    let fx = sim.apply(user("last question"));
    let Effect::AskBrain { history, .. } = &fx[0] else { panic!("{fx:?}") };
    let texts: Vec<_> = history.iter().map(|t| t.text.as_str()).collect();
    assert_eq!(texts, ["answer 3", "question 4", "answer 4"]);
}

#[test]
fn brain_answer_is_sent_from_the_bot_and_resets_unanswered() {
    let mut sim = Sim::new(Channel::Widget);
    sim.apply(user("what is x?"));
    sim.apply(unknown());
    assert_eq!(sim.session.unanswered, 1);
    sim.apply(user("what is y?"));
    let len = sim.session.history.len();
    let fx = sim.apply(answer("Y is a letter."));
    assert_eq!(
        fx,
        vec![Effect::SendToUser {
            message: OutMessage::new(Role::Bot, "Y is a letter."),
            reply_token: None,
            outside_window: false
        }]
    );
    assert_eq!(sim.session.unanswered, 0);
    assert_eq!(sim.session.state, State::Bot);
    assert_eq!(sim.session.history.len(), len + 1);
    assert_eq!(sim.session.history.last().unwrap().role, Role::Bot);
    assert_eq!(sim.session.history.last().unwrap().text, "Y is a letter.");
}

#[test]
fn unknown_below_the_limit_says_not_understood() {
    let mut sim = Sim::new(Channel::Widget);
    sim.apply(user("what is x?"));
    let fx = sim.apply(unknown());
    assert_eq!(
        fx,
        vec![Effect::SendToUser {
            message: OutMessage::new(Role::Bot, en(MessageKey::NotUnderstood)),
            reply_token: None,
            outside_window: false,
        }]
    );
    assert_eq!(sim.session.unanswered, 1);
    assert_eq!(sim.session.state, State::Bot);

    // The brain's own wording wins over the default.
    sim.apply(user("what is z?"));
    let fx = sim.apply(EventKind::BrainReplied { reply: BrainReply::Unknown { text: Some("No idea, sorry.".into()) } });
    assert_eq!(sent(&fx), vec![OutMessage::new(Role::Bot, "No idea, sorry.")]);
    assert_eq!(sim.session.unanswered, 2);
    assert_eq!(sim.session.state, State::Bot);
}

#[test]
fn reaching_max_unanswered_starts_the_handoff_with_the_last_question() {
    let mut sim = Sim::new(Channel::Widget);
    for q in ["what is a?", "what is b?"] {
        sim.apply(user(q));
        sim.apply(unknown());
        assert_eq!(sim.session.state, State::Bot);
    }
    sim.apply(user("what is c?"));
    let fx = sim.apply(unknown());
    assert_eq!(fx, vec![bot(en(MessageKey::AskEmail))]);
    let State::CollectingEmail { question, reason } = &sim.session.state else { panic!("{:?}", sim.session.state) };
    assert_eq!(question, "what is c?");
    assert!(reason.contains('3'), "{reason}");
    assert_eq!(sim.session.unanswered, 0);
}

#[test]
fn max_unanswered_zero_never_hands_off() {
    let mut a = agent();
    a.policy.max_unanswered = 0;
    let mut sim = Sim::with_agent(Channel::Telegram, a);
    for i in 0..6 {
        sim.apply(user(&format!("q{i}")));
        let fx = sim.apply(unknown());
        assert_eq!(sent(&fx), vec![OutMessage::new(Role::Bot, en(MessageKey::NotUnderstood))]);
        assert_eq!(sim.session.state, State::Bot);
    }
}

#[test]
fn brain_handoff_and_brain_failure_start_a_handoff() {
    let mut sim = Sim::new(Channel::Telegram);
    sim.apply(user("my parcel is lost"));
    let fx = sim.apply(EventKind::BrainReplied {
        reply: BrainReply::Handoff { reason: "lost parcel".into(), text: Some("Let me get a colleague.".into()) },
    });
    assert_eq!(sent(&fx)[0], OutMessage::new(Role::Bot, "Let me get a colleague."));
    let req = open_desk(&fx);
    assert_eq!(req.question, "my parcel is lost");
    assert_eq!(req.reason, "lost parcel");
    // The brain's hand-over line is not part of the transcript.
    assert!(sim.session.history.iter().all(|t| t.text != "Let me get a colleague."));

    let mut sim = Sim::new(Channel::Telegram);
    sim.apply(user("my parcel is lost"));
    let fx = sim.apply(EventKind::BrainFailed { error: "boom".into() });
    let req = open_desk(&fx);
    assert_eq!(req.question, "my parcel is lost");
    assert!(req.reason.contains("boom"), "{}", req.reason);
}

#[test]
fn handoff_requested_uses_the_last_user_message_as_question() {
    let mut sim = Sim::new(Channel::Telegram);
    sim.apply(user("I need a refund"));
    sim.apply(answer("Refunds take 5 days."));
    let fx = sim.apply(EventKind::HandoffRequested { reason: "rule: refund".into() });
    let req = open_desk(&fx);
    assert_eq!(req.question, "I need a refund");
    assert_eq!(req.reason, "rule: refund");
    assert!(matches!(sim.session.state, State::WaitingForHuman { .. }));
}

#[test]
fn user_ended_in_bot_state_is_ignored() {
    let mut sim = Sim::new(Channel::Widget);
    assert_eq!(sim.ignored(EventKind::UserEnded), Ignored::NothingToEnd);
}

#[test]
fn stale_button_values_in_bot_state_do_not_reach_the_brain() {
    let mut sim = Sim::new(Channel::Widget);
    sim.apply(user("hello"));
    assert_eq!(sim.ignored(user(END_VALUE)), Ignored::NothingToEnd);
    assert_eq!(sim.ignored(user(KEEP_WAITING_VALUE)), Ignored::NoActiveHandoff);
    assert_eq!(sim.session.history.len(), 1);
}

#[test]
fn empty_user_messages_are_ignored() {
    let mut sim = Sim::new(Channel::Widget);
    assert_eq!(sim.ignored(user("")), Ignored::EmptyMessage);
    assert_eq!(sim.ignored(user("  \n\t ")), Ignored::EmptyMessage);

    let mut sim = Sim::with_human();
    assert_eq!(sim.ignored(user(" ")), Ignored::EmptyMessage);
    assert!(sim.session.timer.is_some(), "an empty message is no reply");
}

#[test]
fn history_is_capped() {
    let mut a = agent();
    a.policy.max_unanswered = 0;
    a.policy.history_messages = 100;
    let mut sim = Sim::with_agent(Channel::Widget, a);
    for i in 0..(HISTORY_CAP + 20) {
        sim.apply(user(&format!("q{i}")));
    }
    assert_eq!(sim.session.history.len(), HISTORY_CAP);
    assert_eq!(sim.session.history[0].text, "q20");
    assert_eq!(sim.session.history.last().unwrap().text, format!("q{}", HISTORY_CAP + 19));
}

/// The session keeps the turns a later step can use (the newest `history_messages` before a
/// question, the question, the user's last turn), so a long conversation costs no more per
/// event than a short one; what the desk and the bot are given does not change.
#[test]
fn only_the_turns_a_step_can_use_are_kept() {
    let texts = |turns: &[Turn]| turns.iter().map(|t| t.text.clone()).collect::<Vec<_>>();
    let mut a = agent();
    a.policy.max_unanswered = 0;
    assert_eq!(a.policy.history_messages, 10);
    let mut sim = Sim::with_agent(Channel::Telegram, a);
    for i in 0..30 {
        sim.apply(user(&format!("q{i}")));
    }
    let expected: Vec<String> = (19..30).map(|i| format!("q{i}")).collect();
    assert_eq!(texts(&sim.session.history), expected);

    // The desk gets the 10 turns before the question, as with the whole history.
    let request = open_desk(&sim.apply(user("human")));
    assert_eq!(texts(&request.history), expected[1..]);
    let id = sim.handoff().id;
    sim.apply(desk_opened(&id, "conv-1"));
    for i in 0..30 {
        sim.apply(human("conv-1", &format!("h{i}")));
    }
    assert!(sim.session.history.len() <= 12, "{:?}", texts(&sim.session.history));
    // The user's last turn stays, however many turns came after it.
    assert!(sim.session.history.iter().any(|t| t.role == Role::User && t.text == "human"));
    // The summary counts every human message, not just the kept turns.
    sim.apply(EventKind::HumanClosed { desk_conversation_id: "conv-1".into() });
    let summary = sim.session.summary.clone().unwrap();
    assert!(summary.contains("the human wrote 30 message(s)"), "{summary}");
}

// ---------------------------------------------------------------- e-mail collection

#[test]
fn handoff_phrase_on_the_widget_without_email_asks_for_it() {
    let mut sim = Sim::new(Channel::Widget);
    let fx = sim.apply(user("I want to talk to a human please"));
    assert_eq!(fx, vec![bot(en(MessageKey::AskEmail))]);
    assert_eq!(
        sim.session.state,
        State::CollectingEmail {
            question: "I want to talk to a human please".into(),
            reason: "the user asked for a human".into(),
        }
    );
    assert_eq!(sim.session.timer, None);
}

#[test]
fn a_single_handoff_word_inside_a_question_is_a_question() {
    let mut sim = Sim::new(Channel::Widget);
    let fx = sim.apply(user("what does your agent software cost"));
    assert!(matches!(fx.as_slice(), [Effect::AskBrain { .. }]), "{fx:?}");
    assert_eq!(sim.session.state, State::Bot);
}

#[test]
fn invalid_email_is_asked_again() {
    let mut sim = Sim::new(Channel::Widget);
    sim.apply(user("human"));
    let collecting = sim.session.state.clone();
    let fx = sim.apply(user("it is jo at example dot org"));
    assert_eq!(fx, vec![bot(en(MessageKey::InvalidEmail))]);
    assert_eq!(sim.session.state, collecting);
    assert_eq!(sim.session.email, None);
    // Another handoff request while collecting is not a second handoff.
    assert_eq!(sim.ignored(EventKind::HandoffRequested { reason: "again".into() }), Ignored::AlreadyHandedOff);
    assert_eq!(sim.ignored(EventKind::UserSetEmail { email: "nope".into() }), Ignored::InvalidEmail);
}

#[test]
fn cancel_or_end_while_collecting_returns_to_the_bot() {
    for text in ["cancel", "Abbrechen!", "stop", END_VALUE] {
        let mut sim = Sim::new(Channel::Widget);
        sim.apply(user("human"));
        let fx = sim.apply(user(text));
        assert_eq!(fx, vec![bot(en(MessageKey::HandoffCancelled))], "{text}");
        assert_eq!(sim.session.state, State::Bot, "{text}");
        assert_eq!(sim.session.timer, None);
    }
    let mut sim = Sim::new(Channel::Widget);
    sim.apply(user("human"));
    let fx = sim.apply(EventKind::UserEnded);
    assert_eq!(fx, vec![bot(en(MessageKey::HandoffCancelled))]);
    assert_eq!(sim.session.state, State::Bot);
}

#[test]
fn valid_email_opens_the_desk_with_the_last_n_turns_and_the_question() {
    let mut sim = Sim::new(Channel::Widget);
    for i in 0..8 {
        sim.apply(user(&format!("question {i}")));
        sim.advance(1);
        sim.apply(answer(&format!("answer {i}")));
        sim.advance(1);
    }
    sim.apply(user("Why was I charged twice?"));
    sim.apply(EventKind::BrainReplied { reply: BrainReply::Handoff { reason: "billing".into(), text: None } });
    assert!(matches!(sim.session.state, State::CollectingEmail { .. }));
    let expected_history: Vec<Turn> =
        sim.session.history[sim.session.history.len() - 11..sim.session.history.len() - 1].to_vec();
    assert_eq!(expected_history.len(), 10);
    assert_eq!(expected_history[0].text, "question 3");
    assert_eq!(expected_history[9].text, "answer 7");

    sim.advance(10);
    let fx = sim.apply(user("sure, it's jo@example.org."));
    let State::WaitingForHuman { handoff, desk_conversation_id, asked_to_keep_waiting } = sim.session.state.clone()
    else {
        panic!("{:?}", sim.session.state)
    };
    assert_eq!(desk_conversation_id, None);
    assert!(!asked_to_keep_waiting);
    assert_eq!(handoff.reason, "billing");
    assert_eq!(handoff.requested_at, sim.now);
    assert!(handoff.id.starts_with("ho_"), "{}", handoff.id);
    assert_eq!(sim.session.email.as_deref(), Some("jo@example.org"));

    let due = sim.now.plus_secs(60);
    assert_eq!(due, Millis(sim.now.0 + 60_000));
    assert_eq!(
        fx,
        vec![
            waiting("en"),
            Effect::OpenDesk {
                request: HandoffRequest {
                    params: [("email".to_string(), "jo@example.org".to_string())].into(),
                    handoff_id: handoff.id.clone(),
                    email: "jo@example.org".into(),
                    history: expected_history,
                    question: "Why was I charged twice?".into(),
                    reason: "billing".into(),
                },
            },
            Effect::ScheduleTimer { generation: sim.generation(), due, kind: TimerKind::Wait },
        ]
    );
    assert_eq!(sim.session.timer.unwrap().kind, TimerKind::Wait);
    assert_eq!(sim.session.timer.unwrap().due, due);
}

#[test]
fn desk_history_for_a_handoff_phrase_excludes_the_phrase_itself() {
    let mut sim = Sim::new(Channel::Telegram);
    sim.apply(user("hello"));
    sim.apply(answer("hi there"));
    let fx = sim.apply(user("talk to a human"));
    let req = open_desk(&fx);
    assert_eq!(req.question, "talk to a human");
    assert_eq!(req.history.iter().map(|t| t.text.as_str()).collect::<Vec<_>>(), ["hello", "hi there"]);
}

#[test]
fn set_email_while_collecting_opens_the_desk() {
    let mut sim = Sim::new(Channel::Widget);
    sim.apply(user("human"));
    let fx = sim.apply(EventKind::UserSetEmail { email: "set@example.com".into() });
    let req = open_desk(&fx);
    assert_eq!(req.email, "set@example.com");
    assert_eq!(req.question, "human");
    assert!(matches!(sim.session.state, State::WaitingForHuman { .. }));
}

#[test]
fn telegram_opens_directly_with_the_default_email() {
    let mut sim = Sim::new(Channel::Telegram);
    let fx = sim.apply(user("human"));
    assert_eq!(fx[0], waiting("en"));
    let req = open_desk(&fx);
    assert_eq!(req.email, "support@example.com");
    assert!(sent(&fx).iter().all(|m| m.text != en(MessageKey::AskEmail)));
    assert!(matches!(sim.session.state, State::WaitingForHuman { .. }));
    assert_eq!(schedules(&fx), vec![(sim.generation(), sim.now.plus_secs(60), TimerKind::Wait)]);
}

#[test]
fn an_email_known_to_the_widget_skips_collection() {
    let mut sim = Sim::new(Channel::Widget);
    let fx = sim.apply(EventKind::UserMessage {
        text: "human".into(),
        email: Some("pre@example.com".into()),
        language: None,
        reply: None,
        name: None,
    });
    assert_eq!(open_desk(&fx).email, "pre@example.com");

    let mut sim = Sim::new(Channel::Widget);
    sim.apply(EventKind::UserSetEmail { email: "set@example.com".into() });
    assert_eq!(sim.session.state, State::Bot);
    let fx = sim.apply(user("human"));
    assert_eq!(open_desk(&fx).email, "set@example.com");

    // An invalid address from the channel is not taken.
    let mut sim = Sim::new(Channel::Widget);
    let fx = sim.apply(EventKind::UserMessage {
        text: "human".into(),
        email: Some("not-an-address".into()),
        language: None,
        reply: None,
        name: None,
    });
    assert_eq!(fx, vec![bot(en(MessageKey::AskEmail))]);
    assert_eq!(sim.session.email, None);
}

#[test]
fn without_require_email_the_widget_opens_directly() {
    let mut a = agent();
    a.policy.require_email = false;
    let mut sim = Sim::with_agent(Channel::Widget, a);
    let fx = sim.apply(user("human"));
    assert_eq!(open_desk(&fx).email, "support@example.com");
}

#[test]
fn without_a_desk_the_user_is_told_and_stays_with_the_bot() {
    let mut a = agent();
    a.desk = DeskConfig::None;
    let mut sim = Sim::with_agent(Channel::Widget, a);
    let fx = sim.apply(user("human"));
    assert_eq!(fx, vec![system(en(MessageKey::NoDesk))]);
    assert_eq!(sim.session.state, State::Bot);
    assert_eq!(sim.session.timer, None);
}

// ---------------------------------------------------------------- waiting for a human

#[test]
fn waiting_user_message_is_posted_to_the_desk() {
    let mut sim = Sim::waiting(Channel::Telegram, "conv-1");
    let timer = sim.session.timer;
    let id = sim.handoff().id;
    let fx = sim.apply(user("are you there?"));
    assert_eq!(fx, vec![Effect::PostToDesk { handoff_id: id, text: "are you there?".into() }]);
    assert_eq!(sim.session.timer, timer, "writing does not touch the wait timer");
    assert_eq!(sim.session.history.last().unwrap().text, "are you there?");
    assert!(matches!(sim.session.state, State::WaitingForHuman { .. }));
}

#[test]
fn desk_opened_names_the_desk_conversation_once() {
    let mut sim = Sim::new(Channel::Telegram);
    sim.apply(user("human"));
    let id = sim.handoff().id;
    assert_eq!(sim.ignored(desk_opened("ho_someone_else", "conv-x")), Ignored::StaleHandoff);
    let timer = sim.session.timer;
    let fx = sim.apply(desk_opened(&id, "conv-1"));
    assert_eq!(fx, vec![]);
    assert_eq!(sim.session.timer, timer);
    assert!(matches!(
        &sim.session.state,
        State::WaitingForHuman { desk_conversation_id: Some(d), asked_to_keep_waiting: false, .. } if d == "conv-1"
    ));
    assert_eq!(sim.ignored(desk_opened(&id, "conv-1")), Ignored::StaleHandoff);
    assert_eq!(sim.ignored(desk_opened(&id, "conv-2")), Ignored::StaleHandoff);
}

#[test]
fn desk_open_failure_returns_to_the_bot() {
    let mut sim = Sim::new(Channel::Telegram);
    sim.apply(user("human"));
    let id = sim.handoff().id;
    assert_eq!(
        sim.ignored(EventKind::DeskOpenFailed { handoff_id: "ho_other".into(), error: "x".into() }),
        Ignored::StaleHandoff
    );
    let fx = sim.apply(EventKind::DeskOpenFailed { handoff_id: id, error: "503".into() });
    assert_eq!(sim.session.state, State::Bot);
    assert_eq!(sim.session.timer, None);
    assert!(fx.contains(&Effect::CancelTimer), "{fx:?}");
    assert!(fx.contains(&system(en(MessageKey::DeskFailed))), "{fx:?}");
    assert!(!fx.iter().any(|e| matches!(e, Effect::CloseDesk { .. })), "{fx:?}");
}

#[test]
fn first_human_message_makes_the_session_official() {
    let mut sim = Sim::waiting(Channel::Telegram, "conv-1");
    let id = sim.handoff().id;
    let old_generation = sim.generation();
    assert_eq!(sim.ignored(human("conv-other", "hello?")), Ignored::StaleHandoff);
    sim.advance(20);
    let fx = sim.apply(human("conv-1", "Hi, this is Anna."));
    let generation = sim.generation();
    assert_ne!(generation, old_generation);
    assert_eq!(
        fx,
        vec![
            system(en(MessageKey::HumanJoined)),
            Effect::SendToUser {
                message: OutMessage {
                    from: Role::Human,
                    text: "Hi, this is Anna.".into(),
                    buttons: vec![Button { label: en(MessageKey::EndChatButton), value: END_VALUE.into() }],
                    escalation: None,
                },
                reply_token: None,
                outside_window: false,
            },
            Effect::ScheduleTimer { generation, due: Millis(sim.now.0 + 180_000), kind: TimerKind::Session },
        ]
    );
    assert!(matches!(
        &sim.session.state,
        State::WithHuman { handoff, desk_conversation_id, human_messages: 1 }
            if handoff.id == id && desk_conversation_id == "conv-1"
    ));
    assert_eq!(sim.session.history.last().unwrap().role, Role::Human);
    // The wait timer is superseded.
    assert_eq!(sim.ignored(timer(old_generation)), Ignored::StaleTimer);
}

#[test]
fn human_message_before_desk_opened_is_accepted_only_for_the_handoff_id() {
    let mut sim = Sim::new(Channel::Telegram);
    sim.apply(user("human"));
    let id = sim.handoff().id;
    assert_eq!(sim.ignored(human("conv-1", "hi")), Ignored::StaleHandoff);
    sim.apply(human(&id, "hi"));
    assert!(matches!(&sim.session.state, State::WithHuman { desk_conversation_id, .. } if *desk_conversation_id == id));
}

#[test]
fn desk_closing_before_any_reply_returns_to_the_bot_without_close_desk() {
    let mut sim = Sim::waiting(Channel::Telegram, "conv-1");
    assert_eq!(sim.ignored(EventKind::HumanClosed { desk_conversation_id: "conv-9".into() }), Ignored::StaleHandoff);
    let fx = sim.apply(EventKind::HumanClosed { desk_conversation_id: "conv-1".into() });
    assert_eq!(fx, vec![Effect::CancelTimer, system(en(MessageKey::HumanEnded))]);
    assert_eq!(sim.session.state, State::Bot);
}

#[test]
fn wait_timeout_asks_to_keep_waiting_or_end() {
    let mut sim = Sim::waiting(Channel::Widget, "conv-1");
    let generation = sim.generation();
    sim.advance(60);
    let fx = sim.apply(timer(generation));
    let reply_generation = sim.generation();
    assert_ne!(reply_generation, generation);
    assert_eq!(
        fx,
        vec![
            Effect::SendToUser {
                message: OutMessage {
                    from: Role::System,
                    text: en(MessageKey::WaitTimeoutQuestion),
                    buttons: vec![
                        Button { label: en(MessageKey::KeepWaiting), value: KEEP_WAITING_VALUE.into() },
                        Button { label: en(MessageKey::EndRequest), value: END_VALUE.into() },
                    ],
                    escalation: None,
                },
                reply_token: None,
                outside_window: false,
            },
            Effect::ScheduleTimer {
                generation: reply_generation,
                due: Millis(sim.now.0 + 60_000),
                kind: TimerKind::WaitReply,
            },
        ]
    );
    assert!(matches!(
        &sim.session.state,
        State::WaitingForHuman { asked_to_keep_waiting: true, desk_conversation_id: Some(d), .. } if d == "conv-1"
    ));
    // The same timer delivered twice is stale.
    assert_eq!(sim.ignored(timer(generation)), Ignored::StaleTimer);
}

#[test]
fn keep_waiting_rearms_the_wait_timer_with_a_new_generation() {
    let mut sim = Sim::waiting(Channel::Widget, "conv-1");
    let first = sim.generation();
    sim.advance(60);
    sim.apply(timer(first));
    let asked = sim.generation();
    sim.advance(10);
    let fx = sim.apply(user(KEEP_WAITING_VALUE));
    let again = sim.generation();
    assert!(again != first && again != asked);
    assert_eq!(
        fx,
        vec![
            Effect::ScheduleTimer { generation: again, due: Millis(sim.now.0 + 60_000), kind: TimerKind::Wait },
            system(en(MessageKey::KeptWaiting)),
        ]
    );
    assert!(matches!(sim.session.state, State::WaitingForHuman { asked_to_keep_waiting: false, .. }));
    // Neither the reply timer nor the first wait timer count any more.
    assert_eq!(sim.ignored(timer(asked)), Ignored::StaleTimer);
    assert_eq!(sim.ignored(timer(first)), Ignored::StaleTimer);
    // The button value is not relayed to the desk.
    assert!(!fx.iter().any(|e| matches!(e, Effect::PostToDesk { .. })));
    // The new one asks again.
    sim.advance(60);
    let fx = sim.apply(timer(again));
    assert_eq!(sent(&fx)[0].text, en(MessageKey::WaitTimeoutQuestion));
    assert_eq!(schedules(&fx)[0].2, TimerKind::WaitReply);
}

#[test]
fn typing_the_keep_waiting_label_works_like_the_button() {
    let mut sim = Sim::waiting(Channel::Widget, "conv-1");
    let g = sim.generation();
    sim.apply(timer(g));
    let fx = sim.apply(user("keep waiting!"));
    assert_eq!(schedules(&fx).len(), 1);
    assert_eq!(schedules(&fx)[0].2, TimerKind::Wait);
}

#[test]
fn keep_waiting_before_being_asked_does_not_rearm() {
    let mut sim = Sim::waiting(Channel::Widget, "conv-1");
    let timer_before = sim.session.timer;
    let fx = sim.apply(user(KEEP_WAITING_VALUE));
    assert_eq!(fx, vec![system(en(MessageKey::KeptWaiting))]);
    assert_eq!(sim.session.timer, timer_before);
}

#[test]
fn no_answer_to_the_wait_question_closes_the_request() {
    let mut sim = Sim::waiting(Channel::Widget, "conv-1");
    let id = sim.handoff().id;
    let g = sim.generation();
    sim.advance(60);
    sim.apply(timer(g));
    let g = sim.generation();
    sim.advance(60);
    let fx = sim.apply(timer(g));
    assert_eq!(
        fx,
        vec![
            Effect::CloseDesk { handoff_id: id, reason: CloseReason::Timeout },
            system(en(MessageKey::RequestTimedOut)),
        ]
    );
    assert_eq!(sim.session.state, State::Bot);
    assert_eq!(sim.session.timer, None);
    assert!(sim.session.summary.is_some());
}

#[test]
fn end_while_waiting_closes_the_desk_as_user_closed() {
    for end in [user(END_VALUE), user("End"), EventKind::UserEnded] {
        let mut sim = Sim::waiting(Channel::Widget, "conv-1");
        let id = sim.handoff().id;
        let g = sim.generation();
        sim.apply(timer(g));
        let fx = sim.apply(end);
        assert_eq!(
            fx,
            vec![
                Effect::CloseDesk { handoff_id: id, reason: CloseReason::UserClosed },
                Effect::CancelTimer,
                system(en(MessageKey::RequestCancelled)),
            ]
        );
        assert_eq!(sim.session.state, State::Bot);
        assert_eq!(sim.session.timer, None);
    }
}

#[test]
fn brain_and_handoff_events_while_waiting_are_ignored() {
    let mut sim = Sim::waiting(Channel::Widget, "conv-1");
    assert_eq!(sim.ignored(answer("late")), Ignored::LateBrainReply);
    assert_eq!(sim.ignored(EventKind::BrainFailed { error: "x".into() }), Ignored::LateBrainReply);
    assert_eq!(sim.ignored(EventKind::HandoffRequested { reason: "x".into() }), Ignored::AlreadyHandedOff);
}

// ---------------------------------------------------------------- with a human

#[test]
fn user_reply_to_the_human_is_posted_and_stops_the_session_timer() {
    let mut sim = Sim::with_human();
    let id = sim.handoff().id;
    let session_generation = sim.generation();
    sim.advance(100);
    let fx = sim.apply(user("thanks, my order is 42"));
    assert_eq!(
        fx,
        vec![Effect::PostToDesk { handoff_id: id, text: "thanks, my order is 42".into() }, Effect::CancelTimer,]
    );
    assert_eq!(sim.session.timer, None);
    // The timeout counts from the human's last message only: the old timer is stale.
    sim.advance(200);
    assert_eq!(sim.ignored(timer(session_generation)), Ignored::StaleTimer);
    assert!(matches!(sim.session.state, State::WithHuman { .. }));
    // A second user message has no timer to cancel.
    let fx = sim.apply(user("hello?"));
    assert_eq!(fx.len(), 1, "{fx:?}");
}

#[test]
fn each_human_message_rearms_the_session_timer() {
    let mut sim = Sim::with_human();
    let first = sim.generation();
    sim.apply(user("ok"));
    sim.advance(30);
    let fx = sim.apply(human("conv-1", "Anything else?"));
    let second = sim.generation();
    assert_ne!(second, first);
    assert_eq!(schedules(&fx), vec![(second, Millis(sim.now.0 + 180_000), TimerKind::Session)]);
    assert_eq!(
        sent(&fx),
        vec![OutMessage {
            from: Role::Human,
            text: "Anything else?".into(),
            buttons: vec![Button { label: en(MessageKey::EndChatButton), value: END_VALUE.into() }],
            escalation: None,
        }]
    );
    assert!(matches!(sim.session.state, State::WithHuman { human_messages: 2, .. }));
    // Two human messages in a row: the latest one counts.
    sim.advance(30);
    sim.apply(human("conv-1", "Hello?"));
    let third = sim.generation();
    assert_eq!(sim.session.timer.unwrap().due, Millis(sim.now.0 + 180_000));
    assert_eq!(sim.ignored(timer(second)), Ignored::StaleTimer);
    assert_ne!(third, second);
    // A human message from another desk conversation is not relayed.
    assert_eq!(sim.ignored(human("conv-2", "wrong chat")), Ignored::StaleHandoff);
}

#[test]
fn session_timeout_closes_the_desk_and_returns_to_the_bot() {
    let mut sim = Sim::with_human();
    let id = sim.handoff().id;
    sim.apply(human("conv-1", "Are you still there?"));
    let g = sim.generation();
    sim.advance(180);
    let fx = sim.apply(timer(g));
    assert_eq!(
        fx,
        vec![
            Effect::CloseDesk { handoff_id: id, reason: CloseReason::Timeout },
            system(en(MessageKey::SessionTimedOut)),
        ]
    );
    assert_eq!(sim.session.state, State::Bot);
    assert_eq!(sim.session.timer, None);
    let summary = sim.session.summary.clone().expect("a summary of the human session");
    assert!(summary.contains("2 message"), "{summary}");
    assert_eq!(sim.ignored(timer(g)), Ignored::StaleTimer);
}

#[test]
fn human_close_returns_to_the_bot_without_closing_the_desk() {
    let mut sim = Sim::with_human();
    assert_eq!(sim.ignored(EventKind::HumanClosed { desk_conversation_id: "conv-2".into() }), Ignored::StaleHandoff);
    let fx = sim.apply(EventKind::HumanClosed { desk_conversation_id: "conv-1".into() });
    assert_eq!(fx, vec![Effect::CancelTimer, system(en(MessageKey::HumanEnded))]);
    assert_eq!(sim.session.state, State::Bot);
    assert_eq!(sim.session.timer, None);
    assert!(sim.session.summary.is_some());
}

#[test]
fn user_can_end_the_human_session() {
    for end in [user("End chat"), user(END_VALUE), user("bye"), EventKind::UserEnded] {
        let mut sim = Sim::with_human();
        let id = sim.handoff().id;
        let fx = sim.apply(end);
        assert_eq!(
            fx,
            vec![
                Effect::CloseDesk { handoff_id: id, reason: CloseReason::UserClosed },
                Effect::CancelTimer,
                system(en(MessageKey::UserEnded)),
            ]
        );
        assert_eq!(sim.session.state, State::Bot);
    }
}

#[test]
fn a_stale_keep_waiting_button_is_not_relayed_to_the_human() {
    let mut sim = Sim::with_human();
    let timer = sim.session.timer;
    assert_eq!(sim.ignored(user(KEEP_WAITING_VALUE)), Ignored::StaleTimer);
    assert_eq!(sim.session.timer, timer, "the session timeout still runs");
}

#[test]
fn events_that_do_not_apply_with_a_human_are_ignored() {
    let mut sim = Sim::with_human();
    let id = sim.handoff().id;
    assert_eq!(sim.ignored(answer("late answer")), Ignored::LateBrainReply);
    assert_eq!(sim.ignored(desk_opened(&id, "conv-1")), Ignored::StaleHandoff);
    assert_eq!(sim.ignored(EventKind::HandoffRequested { reason: "x".into() }), Ignored::AlreadyHandedOff);
}

// ---------------------------------------------------------------- after the handoff

#[test]
fn after_the_handoff_late_desk_events_are_ignored_and_the_bot_knows_what_happened() {
    let mut sim = Sim::with_human();
    let id = sim.handoff().id;
    let g = sim.generation();
    sim.apply(EventKind::HumanClosed { desk_conversation_id: "conv-1".into() });
    assert_eq!(sim.ignored(human("conv-1", "one more thing")), Ignored::NoActiveHandoff);
    assert_eq!(sim.ignored(EventKind::HumanClosed { desk_conversation_id: "conv-1".into() }), Ignored::NoActiveHandoff);
    assert_eq!(sim.ignored(desk_opened(&id, "conv-1")), Ignored::StaleHandoff);
    assert_eq!(sim.ignored(timer(g)), Ignored::StaleTimer);

    let summary = sim.session.summary.clone().unwrap();
    let fx = sim.apply(user("what else can you do?"));
    let [Effect::AskBrain { question, context, .. }] = fx.as_slice() else { panic!("{fx:?}") };
    assert_eq!(question, "what else can you do?");
    assert_eq!(context.as_deref(), Some(summary.as_str()));
}

#[test]
fn a_second_handoff_gets_a_new_id_and_ignores_the_first_desk() {
    let mut sim = Sim::with_human();
    let first = sim.handoff().id;
    sim.apply(user("bye"));
    sim.advance(5);
    sim.apply(user("actually, a human again please"));
    sim.apply(unknown());
    sim.apply(user("talk to a human"));
    let second = sim.handoff().id;
    assert_ne!(first, second);
    assert_eq!(sim.ignored(desk_opened(&first, "conv-9")), Ignored::StaleHandoff);
    assert_eq!(sim.ignored(human("conv-1", "late from the old chat")), Ignored::StaleHandoff);
    sim.apply(desk_opened(&second, "conv-2"));
    sim.apply(human("conv-2", "Hi again, Bob here."));
    assert_eq!(sim.ignored(human("conv-1", "old chat")), Ignored::StaleHandoff);
    assert_eq!(sim.ignored(EventKind::HumanClosed { desk_conversation_id: "conv-1".into() }), Ignored::StaleHandoff);
    assert!(matches!(&sim.session.state, State::WithHuman { handoff, .. } if handoff.id == second));
}

#[test]
fn messages_follow_the_session_language() {
    let mut sim = Sim::new(Channel::Telegram);
    let fx = sim.apply(EventKind::UserMessage {
        text: "Ich möchte mit einem Menschen sprechen".into(),
        email: None,
        language: Some("de".into()),
        reply: None,
        name: None,
    });
    assert_eq!(sim.session.language.as_deref(), Some("de"));
    assert_eq!(fx[0], waiting("de"));
    assert_ne!(de(MessageKey::Waiting), en(MessageKey::Waiting));
    let g = sim.generation();
    let fx = sim.apply(timer(g));
    let question = &sent(&fx)[0];
    assert_eq!(question.text, de(MessageKey::WaitTimeoutQuestion));
    assert_eq!(question.buttons[0].label, "Weiter warten");
    // The German label typed by hand keeps waiting too.
    let fx = sim.apply(user("Weiter warten"));
    assert_eq!(schedules(&fx)[0].2, TimerKind::Wait);
    // Later messages without a language keep the session's language.
    let fx = sim.apply(user("/end"));
    assert!(fx.contains(&system(de(MessageKey::RequestCancelled))), "{fx:?}");
    let fx = sim.apply(user("Hallo"));
    assert!(matches!(&fx[0], Effect::AskBrain { language, .. } if language == "de"));
}

#[test]
fn unsupported_languages_fall_back_to_the_agent_language() {
    let mut a = agent();
    a.language = "fr".into();
    let mut sim = Sim::with_agent(Channel::Widget, a);
    let fx = sim.apply(EventKind::UserMessage {
        text: "humain".into(),
        email: None,
        language: Some("xx".into()),
        reply: None,
        name: None,
    });
    assert_eq!(sim.session.language, None);
    assert_eq!(fx, vec![bot(messages::default_text("fr", MessageKey::AskEmail).to_string())]);
}

#[test]
fn agent_message_overrides_are_used() {
    let mut a = agent();
    a.messages.entry("en".into()).or_default().insert(MessageKey::Waiting, "One moment, please!".into());
    let mut sim = Sim::with_agent(Channel::Telegram, a);
    let fx = sim.apply(user("human"));
    assert_eq!(fx[0], waiting_with("One moment, please!".into(), "en"));
}

#[test]
fn policy_timeouts_are_used() {
    let mut a = agent();
    a.policy.wait_timeout_secs = 5;
    a.policy.wait_reply_timeout_secs = 7;
    a.policy.session_timeout_secs = 11;
    let mut sim = Sim::with_agent(Channel::Telegram, a);
    let fx = sim.apply(user("human"));
    assert_eq!(schedules(&fx)[0].1, Millis(sim.now.0 + 5_000));
    let fx = sim.apply(timer(sim.generation()));
    assert_eq!(schedules(&fx)[0].1, Millis(sim.now.0 + 7_000));
    let id = sim.handoff().id;
    let fx = sim.apply(human(&id, "hi"));
    assert_eq!(schedules(&fx)[0].1, Millis(sim.now.0 + 11_000));
}

#[test]
fn step_is_pure() {
    let sim = Sim::with_human();
    let event = Event::new("x:1", sim.session.key.clone(), sim.now, user("hello"));
    let a = step(&sim.session, &event, sim.now, &sim.agent);
    let b = step(&sim.session, &event, sim.now, &sim.agent);
    assert_eq!(a, b);
}

#[test]
fn an_email_sent_along_with_a_message_while_collecting_opens_the_desk() {
    let mut sim = Sim::new(Channel::Widget);
    sim.apply(user("human"));
    assert!(matches!(sim.session.state, State::CollectingEmail { .. }));
    let fx = sim.apply(EventKind::UserMessage {
        text: "here you go".into(),
        email: Some("ed@example.com".into()),
        language: None,
        reply: None,
        name: None,
    });
    assert_eq!(open_desk(&fx).email, "ed@example.com");
    assert!(matches!(sim.session.state, State::WaitingForHuman { .. }));
}

#[test]
fn writing_on_instead_of_answering_the_wait_question_keeps_waiting() {
    let mut sim = Sim::waiting(Channel::Telegram, "conv-1");
    sim.advance(60);
    let g = sim.generation();
    sim.apply(timer(g));
    let asked_gen = sim.generation();
    let fx = sim.apply(user("still here, any news?"));
    assert!(fx.iter().any(|e| matches!(e, Effect::PostToDesk { .. })));
    let armed = schedules(&fx);
    assert_eq!(armed.len(), 1);
    assert_eq!(armed[0].2, TimerKind::Wait);
    assert_eq!(armed[0].1, Millis(sim.now.0 + 60_000));
    assert!(matches!(sim.session.state, State::WaitingForHuman { asked_to_keep_waiting: false, .. }));
    // The wait-reply timer armed before is stale now.
    assert_eq!(sim.ignored(timer(asked_gen)), Ignored::StaleTimer);
}

fn with_ticket_fallback(mut a: Agent) -> Agent {
    a.fallback = baton_core::agent::FallbackConfig::Ticket { url: "http://127.0.0.1:9/t".into(), signing_secret: None };
    a
}

fn escalations(fx: &[Effect]) -> Vec<HandoffRequest> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Escalate { request } => Some(request.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn outside_service_hours_the_user_gets_the_next_opening_and_the_fallback_runs() {
    use baton_core::hours::{Day, Period, ServiceHours};
    let mut a = with_ticket_fallback(agent());
    a.hours = Some(ServiceHours {
        time_zone: "UTC".into(),
        periods: vec![Period { days: Some(vec![Day::Mon]), date: None, from: "09:00".into(), to: "10:00".into() }],
        holidays: vec![],
    });
    // T0 is Tuesday 2023-11-14 22:13 UTC.
    let mut sim = Sim::with_agent(Channel::Telegram, a);
    let fx = sim.apply(user("human"));
    assert_eq!(sim.session.state, State::Bot);
    let texts: Vec<String> = sent(&fx).into_iter().map(|m| m.text).collect();
    assert_eq!(texts, vec!["Our team is not available right now. We are back on 2023-11-20 09:00 (UTC).".to_string()]);
    let esc = escalations(&fx);
    assert_eq!(esc.len(), 1);
    assert_eq!(esc[0].question, "human");
    assert!(esc[0].reason.contains("outside service hours"));
    assert!(!fx.iter().any(|e| matches!(e, Effect::OpenDesk { .. })));
}

#[test]
fn an_unavailable_desk_sends_the_request_to_the_fallback() {
    let sim = Sim::with_agent(Channel::Telegram, with_ticket_fallback(agent()));
    let facts = baton_core::Facts { desk_status: Some(baton_core::model::ServiceStatus::Unavailable) };
    let ev = Event::new("e1", sim.session.key.clone(), sim.now, user("human"));
    let out = baton_core::step_with(&sim.session, &ev, sim.now, &sim.agent, &facts).unwrap();
    assert_eq!(out.session.state, State::Bot);
    assert_eq!(sent(&out.effects)[0].text, en(MessageKey::DeskUnavailable));
    assert_eq!(escalations(&out.effects).len(), 1);
    // Available or unknown status: the desk is tried.
    let facts = baton_core::Facts { desk_status: Some(baton_core::model::ServiceStatus::Available) };
    let out = baton_core::step_with(&sim.session, &ev, sim.now, &sim.agent, &facts).unwrap();
    assert!(out.effects.iter().any(|e| matches!(e, Effect::OpenDesk { .. })));
}

#[test]
fn a_failed_desk_open_escalates_and_the_fallback_result_is_told() {
    let mut sim = Sim::with_agent(Channel::Telegram, with_ticket_fallback(agent()));
    sim.apply(user("human"));
    let id = sim.handoff().id;
    let fx = sim.apply(EventKind::DeskOpenFailed { handoff_id: id, error: "503".into() });
    assert_eq!(escalations(&fx).len(), 1);
    let fx = sim.apply(EventKind::FallbackDone { detail: "ticket T-9".into() });
    assert_eq!(sent(&fx)[0].text, "We have passed your request on (ticket T-9) and will get back to you.");
}

#[test]
fn without_a_fallback_nothing_is_escalated() {
    let mut sim = Sim::new(Channel::Telegram);
    sim.apply(user("human"));
    let id = sim.handoff().id;
    let fx = sim.apply(EventKind::DeskOpenFailed { handoff_id: id, error: "503".into() });
    assert!(escalations(&fx).is_empty());
}

// ---- Desk -> same desk: the user is in SalesIQ and SalesIQ is the desk ----

fn salesiq_agent() -> Agent {
    let mut a = agent();
    a.desk = DeskConfig::Salesiq { department_id: "dep-1".into(), operator_id: None };
    a
}

/// A SalesIQ visitor conversation (`user-1` is its SalesIQ id) handed off by a transfer.
fn transferred() -> Sim {
    let mut sim = Sim::with_agent(Channel::Salesiq, salesiq_agent());
    let fx = sim.apply(user("human"));
    assert!(
        matches!(&sim.session.state, State::WaitingForHuman { handoff, .. } if handoff.mode == HandoffMode::Transfer)
    );
    // One notice without buttons, the transfer, and no wait timer: the desk queues the user.
    assert_eq!(fx.len(), 2, "{fx:?}");
    assert_eq!(fx[0], system(en(MessageKey::Waiting)));
    assert_eq!(open_desk(&fx).question, "human");
    assert!(sim.session.timer.is_none());
    let id = sim.handoff().id;
    assert_eq!(sim.apply(desk_opened(&id, "user-1")), vec![]);
    sim
}

#[test]
fn a_transfer_inside_the_desk_keeps_the_hub_silent_until_the_desk_completes() {
    let mut sim = transferred();
    // The visitor and the operator talk in SalesIQ itself: nothing is relayed either way.
    assert_eq!(sim.apply(user("are you there?")), vec![]);
    assert_eq!(sim.apply(human("user-1", "Hi, Anna here.")), vec![]);
    assert!(matches!(sim.session.state, State::WithHuman { human_messages: 1, .. }));
    assert_eq!(sim.apply(user("my order is late")), vec![]);
    assert_eq!(sim.apply(human("user-1", "Let me check.")), vec![]);
    assert!(matches!(sim.session.state, State::WithHuman { human_messages: 2, .. }));
    // Stale or foreign desk events change nothing.
    assert_eq!(sim.ignored(human("other-conv", "hi")), Ignored::StaleHandoff);
    assert_eq!(sim.ignored(timer(1)), Ignored::StaleTimer);
    // The transcript is kept for the bot's context.
    let texts: Vec<_> = sim.session.history.iter().map(|t| t.text.as_str()).collect();
    assert_eq!(texts, ["human", "are you there?", "Hi, Anna here.", "my order is late", "Let me check."]);
    // Completed: back to the bot without a word (the conversation is closed in SalesIQ).
    assert_eq!(sim.apply(EventKind::HumanClosed { desk_conversation_id: "user-1".into() }), vec![]);
    assert_eq!(sim.session.state, State::Bot);
    assert!(sim.session.summary.as_deref().unwrap_or_default().contains("completed"));
}

#[test]
fn a_failed_transfer_tells_the_user_and_returns_to_the_bot() {
    let mut sim = transferred();
    // A fresh handoff whose transfer fails for good.
    let mut sim2 = Sim::with_agent(Channel::Salesiq, salesiq_agent());
    sim2.apply(user("human"));
    let id = sim2.handoff().id;
    let fx = sim2.apply(EventKind::DeskOpenFailed { handoff_id: id, error: "403".into() });
    assert_eq!(fx, vec![system(en(MessageKey::DeskFailed))]);
    assert_eq!(sim2.session.state, State::Bot);
    // A transfer already done ignores a late failure of another handoff.
    assert_eq!(
        sim.ignored(EventKind::DeskOpenFailed { handoff_id: "ho_other".into(), error: "x".into() }),
        Ignored::StaleHandoff
    );
}

#[test]
fn an_operator_joining_the_desks_own_conversation_silences_the_bot() {
    let mut sim = Sim::with_agent(Channel::Salesiq, salesiq_agent());
    sim.apply(user("hello"));
    sim.apply(answer("Hi! How can I help?"));
    assert_eq!(sim.apply(human("user-1", "Operator here, I'll take it.")), vec![]);
    assert!(matches!(&sim.session.state, State::WithHuman { handoff, .. } if handoff.mode == HandoffMode::Transfer));
    // The bot stays out of it: user messages are not sent to the brain.
    assert_eq!(sim.apply(user("thanks")), vec![]);
    // An operator message in some other conversation does not count.
    let mut other = Sim::with_agent(Channel::Salesiq, salesiq_agent());
    assert_eq!(other.ignored(human("another-conv", "hi")), Ignored::NoActiveHandoff);
    // On other channels a human message without a handoff stays stale.
    let mut tg = Sim::with_agent(Channel::Telegram, salesiq_agent());
    assert_eq!(tg.ignored(human("user-1", "hi")), Ignored::NoActiveHandoff);
}

#[test]
fn users_of_other_channels_are_relayed_to_a_salesiq_desk() {
    let mut sim = Sim::with_agent(Channel::Telegram, salesiq_agent());
    sim.session.email = Some("jo@example.org".into());
    let fx = sim.apply(user("human"));
    assert_eq!(sim.handoff().mode, HandoffMode::Relay);
    assert_eq!(fx[0], waiting("en"));
    assert_eq!(schedules(&fx).len(), 1, "relay mode runs the wait timer");
}

// ---- Channel limits and reply tokens ----

#[test]
fn long_answers_are_split_to_the_channels_limit_with_buttons_on_the_last_piece() {
    let long = "word ".repeat(2000); // 10,000 characters
    let mut sim = Sim::new(Channel::Telegram);
    sim.apply(user("tell me everything"));
    let fx = sim.apply(answer(&long));
    let pieces: Vec<&OutMessage> = fx
        .iter()
        .map(|e| match e {
            Effect::SendToUser { message, .. } => message,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(pieces.len(), 3);
    assert!(pieces.iter().all(|m| m.text.chars().count() <= 4096));
    assert_eq!(pieces.iter().map(|m| m.text.as_str()).collect::<String>(), long);
    // The history keeps the answer whole.
    assert_eq!(sim.session.history.last().unwrap().text, long);

    // The wait-timeout question's buttons ride on the last piece only.
    let mut sim = Sim::waiting(Channel::Telegram, "conv-1");
    let mut overrides = messages::MessageOverrides::new();
    overrides.entry("en".into()).or_default().insert(MessageKey::WaitTimeoutQuestion, "Still there? ".repeat(400));
    sim.agent.messages = overrides;
    sim.advance(61);
    let fx = sim.apply(timer(sim.generation()));
    let sends: Vec<&OutMessage> = fx
        .iter()
        .filter_map(|e| match e {
            Effect::SendToUser { message, .. } => Some(message),
            _ => None,
        })
        .collect();
    assert_eq!(sends.len(), 2);
    assert!(sends[0].buttons.is_empty());
    assert_eq!(sends[1].buttons.len(), 2);
}

#[test]
fn a_fresh_reply_token_answers_the_first_message_only() {
    let mut sim = Sim::new(Channel::Line);
    let reply = Some(ReplyHandle { token: "rt-1".into(), valid_until: Millis(T0 + 50_000) });
    sim.apply(EventKind::UserMessage { text: "hello".into(), email: None, language: None, reply, name: None });
    sim.advance(2);
    let fx = sim.apply(answer("Hi!"));
    assert_eq!(
        fx,
        vec![Effect::SendToUser {
            message: OutMessage::new(Role::Bot, "Hi!"),
            reply_token: Some("rt-1".into()),
            outside_window: false
        }]
    );
    assert_eq!(sim.session.reply, None, "a reply token is single-use");

    // Expired by the time the answer comes: sent without it (the channel pushes).
    let reply = Some(ReplyHandle { token: "rt-2".into(), valid_until: Millis(sim.now.0 + 1_000) });
    sim.apply(EventKind::UserMessage { text: "and?".into(), email: None, language: None, reply, name: None });
    sim.advance(5);
    let fx = sim.apply(answer("Later."));
    assert_eq!(fx, vec![bot("Later.".into())]);
}

// ---- WhatsApp's 24-hour window ----

#[test]
fn a_human_reply_after_the_whatsapp_window_is_reported_to_the_desk() {
    let mut sim = Sim::waiting(Channel::Whatsapp, "conv-1");
    let id = sim.handoff().id;
    // Inside the window: relayed as usual.
    sim.advance(3600);
    let fx = sim.apply(human("conv-1", "Hi, Anna here."));
    assert!(fx.iter().any(
        |e| matches!(e, Effect::SendToUser { message, outside_window: false, .. } if message.text == "Hi, Anna here.")
    ));
    // 25 hours after the user's last message only a template could reach them: without one,
    // the desk is told the reply was not delivered.
    sim.advance(24 * 3600);
    let fx = sim.apply(human("conv-1", "Are you still there?"));
    assert!(!fx.iter().any(|e| matches!(e, Effect::SendToUser { .. })), "{fx:?}");
    let notes: Vec<&str> = fx
        .iter()
        .filter_map(|e| match e {
            Effect::PostToDesk { handoff_id, text } if *handoff_id == id => Some(text.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(notes.len(), 1, "{fx:?}");
    assert!(notes[0].contains("Not delivered") && notes[0].contains("Are you still there?"));

    // With an approved template the reply goes out through it.
    sim.agent.channels.whatsapp = Some(baton_core::agent::WhatsappConfig {
        phone_number_id: "1065".into(),
        access_token: Default::default(),
        app_secret: Default::default(),
        verify_token: Default::default(),
        api_base: baton_core::agent::default_graph_api(),
        api_version: baton_core::agent::default_graph_version(),
        window_template: Some(baton_core::agent::WhatsappTemplate { name: "late_reply".into(), language: "en".into() }),
    });
    let fx = sim.apply(human("conv-1", "Your parcel left today."));
    assert!(fx.iter().any(|e| matches!(e, Effect::SendToUser { message, outside_window: true, .. } if message.text == "Your parcel left today.")));

    // The user writes again: the window is open again.
    sim.apply(user("thanks"));
    let fx = sim.apply(human("conv-1", "You're welcome"));
    assert!(fx.iter().any(|e| matches!(e, Effect::SendToUser { outside_window: false, .. })));
}

#[test]
fn session_parameters_reach_the_brain_and_the_desk() {
    let mut sim = Sim::new(Channel::Whatsapp);
    sim.agent.policy.require_email = false;
    let fx = sim.apply(user("10 packs of flour"));
    let Some(Effect::AskBrain { params, .. }) = fx.first() else { panic!("{fx:?}") };
    let phone = format!("+{}", sim.session.key.user);
    assert_eq!(params.get("phone"), Some(&phone), "a WhatsApp user's number is known");
    // The brain's tools learned who it is; an empty value removes a parameter.
    let learned = [("contact_id", "C-100"), ("customer_name", "Ana Horvat"), ("scratch", "x")];
    sim.apply(EventKind::ParamsSet {
        params: learned.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        sanitize: Default::default(),
    });
    sim.apply(EventKind::ParamsSet {
        params: [("scratch".to_string(), String::new())].into(),
        sanitize: Default::default(),
    });
    assert_eq!(sim.session.params.get("contact_id").map(String::as_str), Some("C-100"));
    assert!(!sim.session.params.contains_key("scratch"));
    sim.apply(answer("That is 12.00 EUR."));
    let fx = sim.apply(user("I want to talk to a human"));
    let request = open_desk(&fx);
    assert_eq!(request.params.get("contact_id").map(String::as_str), Some("C-100"));
    assert_eq!(request.params.get("customer_name").map(String::as_str), Some("Ana Horvat"));
    assert_eq!(request.params.get("phone"), Some(&phone));
}

fn api_agent(escalation: baton_core::agent::ApiEscalation) -> Agent {
    let mut a = agent();
    a.api = Some(baton_core::agent::ApiConfig {
        welcome: "Hello, how can I help?".into(),
        session_expiry_secs: 7200,
        escalation,
        ..Default::default()
    });
    a
}

fn set_params(pairs: &[(&str, &str)], sanitize: &[&str]) -> EventKind {
    EventKind::ParamsSet {
        params: pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        sanitize: sanitize.iter().map(|s| s.to_string()).collect(),
    }
}

#[test]
fn api_session_starts_once_resumes_while_active_and_expires_after_its_window() {
    let mut sim = Sim::with_agent(Channel::Api, api_agent(Default::default()));
    assert_eq!(sim.apply(EventKind::SessionStarted), vec![bot("Hello, how can I help?".into())]);
    // A second start within the window resumes: no second welcome, history kept.
    sim.apply(user("opening hours?"));
    sim.apply(answer("9 to 5."));
    sim.advance(7199);
    assert_eq!(sim.apply(EventKind::SessionStarted), vec![]);
    sim.apply(set_params(&[("customer", "C-1")], &[]));
    assert_eq!(sim.session.history.len(), 3);

    // Two hours after the last message the session has lapsed: the next input starts over.
    sim.advance(7200);
    let fx = sim.apply(user("new question"));
    let Some(Effect::AskBrain { history, params, .. }) = fx.first() else { panic!("{fx:?}") };
    assert!(history.is_empty(), "the old session's turns are gone: {history:?}");
    assert!(params.is_empty(), "and so are its parameters: {params:?}");
    assert_eq!(sim.session.history.len(), 1);
}

#[test]
fn api_session_end_closes_the_human_session_and_the_next_message_starts_anew() {
    let mut sim = Sim::with_agent(Channel::Api, api_agent(Default::default()));
    sim.agent.policy.require_email = false;
    sim.apply(EventKind::SessionStarted);
    sim.apply(set_params(&[("phone", "+385911234567")], &["phone"]));
    sim.apply(user("human"));
    let handoff = sim.handoff().id;
    sim.apply(EventKind::DeskOpened { handoff_id: handoff.clone(), desk_conversation_id: "conv-9".into() });
    sim.apply(human("conv-9", "Hello, Anna here."));
    let generation = sim.session.next_timer_generation;
    let fx = sim.apply(EventKind::SessionEnded);
    assert_eq!(
        fx,
        vec![Effect::CloseDesk { handoff_id: handoff, reason: CloseReason::UserClosed }, Effect::CancelTimer],
        "the human session closes; nothing is said to a user who left"
    );
    assert_eq!(sim.session.state, State::Bot);
    assert!(sim.session.history.is_empty() && sim.session.params.is_empty() && sim.session.sanitized.is_empty());
    assert_eq!(sim.session.next_timer_generation, generation, "old timers stay stale");
    assert_eq!(sim.ignored(EventKind::SessionEnded), Ignored::NothingToEnd);
    // A late human message of the closed session changes nothing.
    assert_eq!(sim.ignored(human("conv-9", "still there?")), Ignored::NoActiveHandoff);
    // Same conversation id, new session: the welcome comes again.
    assert_eq!(sim.apply(EventKind::SessionStarted), vec![bot("Hello, how can I help?".into())]);
}

#[test]
fn sanitized_parameters_are_masked_for_humans_but_not_for_the_brain() {
    let mut sim = Sim::with_agent(Channel::Api, api_agent(Default::default()));
    sim.agent.policy.require_email = false;
    sim.apply(set_params(&[("phone", "+385911234567"), ("plan", "gold")], &["phone"]));
    let fx = sim.apply(user("what is my plan?"));
    let Some(Effect::AskBrain { params, .. }) = fx.first() else { panic!("{fx:?}") };
    assert_eq!(params.get("phone").map(String::as_str), Some("+385911234567"));
    let fx = sim.apply(EventKind::HandoffRequested { reason: "the caller asked".into() });
    let request = open_desk(&fx);
    assert_eq!(request.params.get("phone").map(String::as_str), Some(baton_core::session::SANITIZED));
    assert_eq!(request.params.get("plan").map(String::as_str), Some("gold"));
    // Setting a value again without the mark keeps it marked; removing it drops the mark.
    sim.apply(set_params(&[("phone", "")], &[]));
    assert!(sim.session.sanitized.is_empty());
}

#[test]
fn api_escalation_to_the_caller_carries_the_transfer_target_and_respects_hours() {
    use baton_core::hours::{Period, ServiceHours};
    let to_caller =
        baton_core::agent::ApiEscalation::Caller { transfer_to: Some("+4930123456".into()), ask_team_online: false };
    let mut sim = Sim::with_agent(Channel::Api, api_agent(to_caller));
    sim.agent.desk = DeskConfig::None;
    sim.apply(user("I need a person"));
    let fx = sim
        .apply(EventKind::BrainReplied { reply: BrainReply::Handoff { reason: "billing dispute".into(), text: None } });
    let [Effect::SendToUser { message, .. }] = fx.as_slice() else { panic!("{fx:?}") };
    let escalation = message.escalation.as_ref().expect("an escalation");
    assert_eq!(escalation.reason, "billing dispute");
    assert_eq!(escalation.transfer_to.as_deref(), Some("+4930123456"));
    assert_eq!(sim.session.state, State::Bot, "the integration's humans take it from here");

    // Outside service hours nobody can take the call: the out-of-hours answer instead.
    // Open only on one day long past.
    sim.agent.hours = Some(ServiceHours {
        time_zone: "UTC".into(),
        periods: vec![Period { days: None, date: Some("2020-01-01".into()), from: "09:00".into(), to: "17:00".into() }],
        holidays: vec![],
    });
    let fx = sim.apply(EventKind::HandoffRequested { reason: "again".into() });
    assert!(
        fx.iter().all(|e| !matches!(e, Effect::SendToUser { message, .. } if message.escalation.is_some())),
        "{fx:?}"
    );
    // Other channels of the same agent ignore the API escalation setting.
    let mut other = Sim::with_agent(Channel::Widget, sim.agent.clone());
    other.agent.hours = None;
    let fx = other.apply(EventKind::HandoffRequested { reason: "x".into() });
    assert!(fx.iter().all(|e| !matches!(e, Effect::SendToUser { message, .. } if message.escalation.is_some())));
}

#[test]
fn email_and_language_parameters_drive_the_session() {
    let mut sim = Sim::with_agent(Channel::Api, api_agent(Default::default()));
    sim.apply(set_params(&[("email", "ana@example.com"), ("language", "de")], &[]));
    sim.apply(set_params(&[("email", "not an address"), ("language", "xx")], &[]));
    assert_eq!(sim.session.email.as_deref(), Some("ana@example.com"), "an invalid value changes nothing");
    assert_eq!(sim.session.language.as_deref(), Some("de"));
    let fx = sim.apply(EventKind::HandoffRequested { reason: "asked".into() });
    assert_eq!(open_desk(&fx).email, "ana@example.com");
    assert!(fx
        .iter()
        .any(|e| matches!(e, Effect::SendToUser { message, .. } if message.text == de(MessageKey::Waiting))));
}

#[test]
fn the_channel_fills_in_the_name_and_language_without_overriding_what_was_set() {
    let mut sim = Sim::new(Channel::Telegram);
    sim.agent.policy.require_email = false;
    sim.apply(EventKind::UserMessage {
        text: "hallo".into(),
        email: None,
        language: Some("de".into()),
        name: Some("Ada Lovelace".into()),
        reply: None,
    });
    assert_eq!(sim.session.params.get("name").map(String::as_str), Some("Ada Lovelace"));
    assert_eq!(sim.session.params.get("language").map(String::as_str), Some("de"));
    sim.apply(answer("Hallo!"));
    sim.apply(set_params(&[("name", "Ada King")], &[]));
    sim.apply(EventKind::UserMessage {
        text: "noch da?".into(),
        email: None,
        language: None,
        name: Some("Ada Lovelace".into()),
        reply: None,
    });
    assert_eq!(sim.session.params.get("name").map(String::as_str), Some("Ada King"), "an explicit value stays");
    let fx = sim.apply(EventKind::HandoffRequested { reason: "asked".into() });
    assert_eq!(open_desk(&fx).params.get("name").map(String::as_str), Some("Ada King"));
}
