//! The session state machine. `step` is pure: it is fed the session, one event, the time
//! and the agent, and returns the next session and the effects to run. Events that do not
//! apply in the current state (late, duplicated, out of order) are returned as `Ignored`
//! with the reason, so the shell records them as seen and logs them instead of acting.

use crate::agent::{Agent, ApiEscalation, DeskConfig, FallbackConfig};
use crate::effect::{Effect, HandoffRequest, TimerKind};
use crate::event::{BrainReply, Event, EventKind, ReplyHandle};
use crate::messages::{self, MessageKey};
use crate::model::{
    Button, Channel, CloseReason, ConversationKey, Escalation, Millis, OutMessage, Role, ServiceStatus, Turn,
};
use crate::phrases;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Payload schema version of stored sessions.
pub const SESSION_SCHEMA: u32 = 1;

/// Most turns kept on the session (the brain's context and the desk's history come from
/// here); after each step only those `policy.history_messages` needs stay.
pub const HISTORY_CAP: usize = 100;

/// Button values: what comes back as the user's text when a button is pressed.
pub const KEEP_WAITING_VALUE: &str = "/keep_waiting";
pub const END_VALUE: &str = "/end";

/// What a parameter marked as personal data shows instead of its value.
pub const SANITIZED: &str = "[redacted]";

fn session_schema() -> u32 {
    SESSION_SCHEMA
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    #[serde(default = "session_schema")]
    pub schema: u32,
    pub key: ConversationKey,
    pub state: State,
    #[serde(default)]
    pub history: Vec<Turn>,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub language: Option<String>,
    /// Consecutive turns the brain could not answer.
    #[serde(default)]
    pub unanswered: u32,
    #[serde(default)]
    pub timer: Option<ArmedTimer>,
    /// Next timer generation; a fired timer of any other generation is stale.
    #[serde(default)]
    pub next_timer_generation: u64,
    /// What happened in the last human session, for the bot's context.
    #[serde(default)]
    pub summary: Option<String>,
    /// The channel's reply handle for the user's last message, until it is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<ReplyHandle>,
    /// When the user last wrote (for channels with a reply window).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_user_at: Option<Millis>,
    /// What is known about the user and their request (`email`, `phone`, a customer id, ...),
    /// set by the channel and by the brain's tools; the brain sees them and the desk gets them.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub params: std::collections::BTreeMap<String, String>,
    /// Parameters marked as personal data: masked wherever they are shown.
    #[serde(default, skip_serializing_if = "std::collections::BTreeSet::is_empty")]
    pub sanitized: std::collections::BTreeSet<String>,
    /// When a message was last sent or received (Agent API sessions expire from here);
    /// none while the session has not started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_activity_at: Option<Millis>,
    #[serde(default)]
    pub updated_at: Millis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArmedTimer {
    pub generation: u64,
    pub kind: TimerKind,
    pub due: Millis,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum State {
    /// The bot answers.
    Bot,
    /// A handoff waits for the user's e-mail address.
    CollectingEmail { question: String, reason: String },
    /// The desk conversation is being opened or is open; no human has replied yet.
    WaitingForHuman {
        handoff: Handoff,
        /// The desk's conversation id, once the desk has named it.
        desk_conversation_id: Option<String>,
        /// The user has been asked whether to end or keep waiting.
        asked_to_keep_waiting: bool,
    },
    /// A human replied: the session is official.
    WithHuman { handoff: Handoff, desk_conversation_id: String, human_messages: u32 },
}

impl State {
    pub fn name(&self) -> &'static str {
        match self {
            State::Bot => "bot",
            State::CollectingEmail { .. } => "collecting_email",
            State::WaitingForHuman { .. } => "waiting_for_human",
            State::WithHuman { .. } => "with_human",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handoff {
    pub id: String,
    pub reason: String,
    pub requested_at: Millis,
    #[serde(default)]
    pub mode: HandoffMode,
}

/// How the human gets the conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum HandoffMode {
    /// A desk conversation is opened for the user; the hub relays both ways.
    #[default]
    Relay,
    /// The user already writes in the desk's own messenger: the desk transfers the
    /// conversation to a human and the hub stays silent until the desk completes it.
    Transfer,
}

/// Why an event changed nothing. Recorded as seen and logged, never acted on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ignored {
    #[error("no human session is active for this desk conversation")]
    NoActiveHandoff,
    #[error("the event belongs to an earlier handoff")]
    StaleHandoff,
    #[error("the timer was re-armed or cancelled since")]
    StaleTimer,
    #[error("a brain reply arrived after a human took over")]
    LateBrainReply,
    #[error("a handoff is already in progress")]
    AlreadyHandedOff,
    #[error("there is nothing to end")]
    NothingToEnd,
    #[error("the message is empty")]
    EmptyMessage,
    #[error("the e-mail address is not valid")]
    InvalidEmail,
}

/// The outcome of one applied event.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub session: Session,
    pub effects: Vec<Effect>,
}

impl Session {
    pub fn new(key: ConversationKey) -> Self {
        Session {
            schema: SESSION_SCHEMA,
            key,
            state: State::Bot,
            history: Vec::new(),
            email: None,
            language: None,
            unanswered: 0,
            timer: None,
            next_timer_generation: 1,
            summary: None,
            reply: None,
            last_user_at: None,
            params: Default::default(),
            sanitized: Default::default(),
            last_activity_at: None,
            updated_at: Millis(0),
        }
    }

    /// A new session under the same conversation id: everything but the timer generation
    /// (so timers of the old session stay stale) starts over.
    fn restarted(&self) -> Session {
        Session { next_timer_generation: self.next_timer_generation, ..Session::new(self.key.clone()) }
    }

    fn push_turn(&mut self, role: Role, text: &str, at: Millis) {
        self.history.push(Turn { role, text: text.to_string(), at });
        if self.history.len() > HISTORY_CAP {
            let excess = self.history.len() - HISTORY_CAP;
            self.history.drain(..excess);
        }
    }

    /// Drop the turns no later step can use. A step reads the newest `n` user, bot and
    /// human turns before the current question (the brain's context, the desk's history:
    /// `policy.history_messages`) and the user's last turn (for a fallback), so the newest
    /// `n + 1` of them are kept with the system turns among them, and the user's last turn
    /// if it is older. The session is read and written on every event: keeping history it
    /// never uses made each event cost more the longer the conversation ran.
    fn keep_turns_for(&mut self, n: usize) {
        let mut kept = 0;
        let mut start = self.history.len();
        for (i, turn) in self.history.iter().enumerate().rev() {
            if kept > n {
                break;
            }
            start = i;
            kept += usize::from(turn.role != Role::System);
        }
        let last_user = self.history.iter().rposition(|t| t.role == Role::User);
        match last_user {
            Some(u) if u < start => {
                self.history.drain(u + 1..start);
                self.history.drain(..u);
            }
            _ => {
                self.history.drain(..start);
            }
        }
    }
}

/// What the shell knows about the world beyond the session when it applies an event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// The desk's last known service status; `Unavailable` turns handoffs to the fallback.
    pub desk_status: Option<ServiceStatus>,
}

/// Apply one event. Pure: no clock, no I/O, no randomness.
pub fn step(session: &Session, event: &Event, now: Millis, agent: &Agent) -> Result<Step, Ignored> {
    step_with(session, event, now, agent, &Facts::default())
}

/// [`step`] with facts about the desk.
pub fn step_with(session: &Session, event: &Event, now: Millis, agent: &Agent, facts: &Facts) -> Result<Step, Ignored> {
    let mut m = Machine { s: session.clone(), fx: Vec::new(), now, agent, facts, event_id: &event.id };
    m.s.updated_at = now;
    m.apply(&event.kind)?;
    m.s.keep_turns_for(agent.policy.history_messages);
    Ok(Step { session: m.s, effects: m.fx })
}

struct Machine<'a> {
    s: Session,
    fx: Vec<Effect>,
    now: Millis,
    agent: &'a Agent,
    facts: &'a Facts,
    event_id: &'a str,
}

impl Machine<'_> {
    fn apply(&mut self, kind: &EventKind) -> Result<(), Ignored> {
        if self.api_session_expired(kind) {
            self.s = Session { updated_at: self.now, ..self.s.restarted() };
        }
        if let EventKind::UserMessage { email, language, reply, name, .. } = kind {
            self.s.last_activity_at = Some(self.now);
            self.s.reply = reply.clone();
            self.s.last_user_at = Some(self.now);
            if let Some(e) = email.as_deref().filter(|e| crate::email::is_valid(e)) {
                self.s.email = Some(e.to_string());
            }
            if self.s.key.channel == crate::model::Channel::Whatsapp && !self.s.params.contains_key("phone") {
                // A WhatsApp user's id is their number.
                let phone = format!("+{}", self.s.key.user.trim_start_matches('+'));
                self.s.params.insert("phone".into(), phone);
            }
            if let Some(l) = language.as_deref().filter(|l| messages::LANGUAGES.contains(l)) {
                self.s.language = Some(l.to_string());
                self.s.params.entry("language".into()).or_insert_with(|| l.to_string());
            }
            // What the channel knows fills in; a value set explicitly (metaData, actions) stays.
            if let Some(n) = name.as_deref().map(str::trim).filter(|n| !n.is_empty() && n.chars().count() <= 200) {
                self.s.params.entry("name".into()).or_insert_with(|| n.to_string());
            }
        }
        let state = self.s.state.clone();
        match (state, kind) {
            (_, EventKind::UserMessage { text, .. }) if text.trim().is_empty() => Err(Ignored::EmptyMessage),
            (_, EventKind::Wake) => Ok(()),
            (_, EventKind::ParamsSet { params, sanitize }) => {
                for (k, v) in params {
                    if v.is_empty() {
                        self.s.params.remove(k);
                        self.s.sanitized.remove(k);
                    } else {
                        self.s.params.insert(k.clone(), v.clone());
                        if sanitize.contains(k) {
                            self.s.sanitized.insert(k.clone());
                        }
                        // The well-known ones also drive the session: who to e-mail, which language.
                        match k.as_str() {
                            "email" if crate::email::is_valid(v) => self.s.email = Some(v.clone()),
                            "language" if messages::LANGUAGES.contains(&v.as_str()) => {
                                self.s.language = Some(v.clone())
                            }
                            _ => {}
                        }
                    }
                }
                Ok(())
            }
            (_, EventKind::SessionStarted) => {
                if self.s.last_activity_at.is_some() {
                    return Ok(()); // an active session resumes as it is
                }
                self.s.last_activity_at = Some(self.now);
                let welcome = self.agent.api.as_ref().map(|a| a.welcome.clone()).unwrap_or_default();
                if !welcome.trim().is_empty() {
                    self.say_as(Role::Bot, welcome);
                }
                Ok(())
            }
            (state, EventKind::SessionEnded) => {
                if self.s.last_activity_at.is_none() && matches!(state, State::Bot) {
                    return Err(Ignored::NothingToEnd);
                }
                if let State::WaitingForHuman { handoff, .. } | State::WithHuman { handoff, .. } = &state {
                    if handoff.mode == HandoffMode::Relay {
                        let handoff_id = handoff.id.clone();
                        self.fx.push(Effect::CloseDesk { handoff_id, reason: CloseReason::UserClosed });
                    }
                }
                if self.s.timer.is_some() {
                    self.fx.push(Effect::CancelTimer);
                }
                self.s = Session { updated_at: self.now, ..self.s.restarted() };
                Ok(())
            }
            (_, EventKind::UserSetEmail { email }) => {
                if !crate::email::is_valid(email) {
                    return Err(Ignored::InvalidEmail);
                }
                self.s.email = Some(email.clone());
                if let State::CollectingEmail { question, reason } = &self.s.state {
                    let (q, r) = (question.clone(), reason.clone());
                    self.open_desk(q, r);
                }
                Ok(())
            }

            // ---- Bot ----
            // A button pressed after its request or session ended: no question for the brain.
            (State::Bot, EventKind::UserMessage { text, .. }) if text.trim() == END_VALUE => Err(Ignored::NothingToEnd),
            (State::Bot, EventKind::UserMessage { text, .. }) if text.trim() == KEEP_WAITING_VALUE => {
                Err(Ignored::NoActiveHandoff)
            }
            (State::Bot, EventKind::UserMessage { text, .. }) => {
                self.s.push_turn(Role::User, text, self.now);
                if phrases::matches(text, &self.agent.policy.handoff_phrases) {
                    self.start_handoff(text.clone(), "the user asked for a human".into());
                } else {
                    self.fx.push(Effect::AskBrain {
                        question: text.clone(),
                        history: self.recent_history(true),
                        context: self.s.summary.clone(),
                        language: self.lang().to_string(),
                        params: self.params(),
                    });
                }
                Ok(())
            }
            (State::Bot, EventKind::BrainReplied { reply }) => {
                match reply {
                    BrainReply::Answer { text, buttons } => {
                        self.s.unanswered = 0;
                        self.s.push_turn(Role::Bot, text, self.now);
                        self.send(OutMessage { buttons: buttons.clone(), ..OutMessage::new(Role::Bot, text.clone()) });
                    }
                    BrainReply::Deferred => {}
                    BrainReply::Unknown { text } => {
                        self.s.unanswered += 1;
                        let limit = self.agent.policy.max_unanswered;
                        if limit > 0 && self.s.unanswered >= limit {
                            self.s.unanswered = 0;
                            let reason = format!("the assistant could not answer {limit} times in a row");
                            self.start_handoff(self.last_user_text(), reason);
                        } else {
                            let t = text.clone().unwrap_or_else(|| self.msg(MessageKey::NotUnderstood));
                            self.say_as(Role::Bot, t);
                        }
                    }
                    BrainReply::Handoff { reason, text } => {
                        // Not added to the history: the desk gets the turns before the question.
                        if let Some(t) = text {
                            self.send(OutMessage::new(Role::Bot, t.clone()));
                        }
                        self.start_handoff(self.last_user_text(), reason.clone());
                    }
                }
                Ok(())
            }
            (State::Bot, EventKind::BrainFailed { error }) => {
                self.start_handoff(self.last_user_text(), format!("the assistant failed: {error}"));
                Ok(())
            }
            (State::Bot, EventKind::HandoffRequested { reason }) => {
                self.start_handoff(self.last_user_text(), reason.clone());
                Ok(())
            }
            (State::Bot, EventKind::UserEnded) => Err(Ignored::NothingToEnd),
            (State::Bot, EventKind::TeamOnline { online, question, reason }) => {
                self.team_online(*online, question, reason);
                Ok(())
            }
            (State::CollectingEmail { .. }, EventKind::TeamOnline { .. }) => Err(Ignored::StaleHandoff),

            // ---- CollectingEmail ----
            (State::CollectingEmail { question, reason }, EventKind::UserMessage { text, .. }) => {
                if phrases::is_cancel(text) || phrases::matches(text, &self.agent.policy.end_phrases) {
                    self.s.state = State::Bot;
                    self.say(MessageKey::HandoffCancelled);
                } else if let Some(email) = crate::email::find_in(text).or_else(|| self.s.email.clone()) {
                    // An address in the text, or one the channel sent along with it.
                    self.s.email = Some(email);
                    self.open_desk(question, reason);
                } else {
                    self.say(MessageKey::InvalidEmail);
                }
                Ok(())
            }
            (State::CollectingEmail { .. }, EventKind::UserEnded) => {
                self.s.state = State::Bot;
                self.say(MessageKey::HandoffCancelled);
                Ok(())
            }
            (State::CollectingEmail { .. }, EventKind::HandoffRequested { .. }) => Err(Ignored::AlreadyHandedOff),

            // ---- A transfer inside the desk's own messenger: the hub only watches ----
            (State::WaitingForHuman { handoff, desk_conversation_id, .. }, ev)
                if handoff.mode == HandoffMode::Transfer =>
            {
                self.transferred(handoff, desk_conversation_id, 0, ev)
            }
            (State::WithHuman { handoff, desk_conversation_id, human_messages }, ev)
                if handoff.mode == HandoffMode::Transfer =>
            {
                self.transferred(handoff, Some(desk_conversation_id), human_messages, ev)
            }
            // An operator took over the desk's own conversation without a handoff.
            (State::Bot, EventKind::HumanMessage { desk_conversation_id, text })
                if self.agent.desk.hosts(self.s.key.channel) && *desk_conversation_id == self.s.key.user =>
            {
                let handoff = Handoff {
                    id: self.handoff_id(),
                    reason: "an operator joined the conversation".into(),
                    requested_at: self.now,
                    mode: HandoffMode::Transfer,
                };
                self.s.push_turn(Role::Human, text, self.now);
                self.s.state =
                    State::WithHuman { handoff, desk_conversation_id: desk_conversation_id.clone(), human_messages: 1 };
                Ok(())
            }

            // ---- WaitingForHuman ----
            (State::WaitingForHuman { handoff, desk_conversation_id, asked_to_keep_waiting }, ev) => {
                self.waiting(handoff, desk_conversation_id, asked_to_keep_waiting, ev)
            }

            // ---- WithHuman ----
            (State::WithHuman { handoff, desk_conversation_id, human_messages }, ev) => {
                self.with_human(handoff, desk_conversation_id, human_messages, ev)
            }

            // Anything about desks or timers while no handoff is active is stale.
            (State::CollectingEmail { .. }, EventKind::BrainReplied { .. } | EventKind::BrainFailed { .. }) => {
                Err(Ignored::LateBrainReply)
            }
            (
                State::Bot | State::CollectingEmail { .. },
                EventKind::DeskOpened { .. } | EventKind::DeskOpenFailed { .. },
            ) => Err(Ignored::StaleHandoff),
            (
                State::Bot | State::CollectingEmail { .. },
                EventKind::HumanMessage { .. } | EventKind::HumanClosed { .. },
            ) => Err(Ignored::NoActiveHandoff),
            (State::Bot | State::CollectingEmail { .. }, EventKind::TimerFired { .. }) => Err(Ignored::StaleTimer),
            (State::Bot | State::CollectingEmail { .. }, EventKind::FallbackDone { detail }) => {
                self.fallback_done(detail);
                Ok(())
            }
        }
    }

    fn waiting(
        &mut self,
        handoff: Handoff,
        desk_id: Option<String>,
        asked: bool,
        ev: &EventKind,
    ) -> Result<(), Ignored> {
        let matches_desk = |d: &str| desk_id.as_deref().map_or(d == handoff.id, |own| own == d);
        match ev {
            EventKind::UserMessage { text, .. } => {
                let t = text.trim();
                if t == END_VALUE || phrases::matches(t, &self.agent.policy.end_phrases) {
                    self.end_by_user(&handoff, MessageKey::RequestCancelled, 0);
                } else if t == KEEP_WAITING_VALUE
                    || (asked && phrases::normalise(t) == phrases::normalise(&self.msg(MessageKey::KeepWaiting)))
                {
                    if asked {
                        self.s.state = State::WaitingForHuman {
                            handoff,
                            desk_conversation_id: desk_id,
                            asked_to_keep_waiting: false,
                        };
                        self.arm(TimerKind::Wait, self.agent.policy.wait_timeout_secs);
                    }
                    self.say(MessageKey::KeptWaiting);
                } else {
                    self.s.push_turn(Role::User, text, self.now);
                    self.fx.push(Effect::PostToDesk { handoff_id: handoff.id.clone(), text: text.clone() });
                    // Writing on instead of answering "end or keep waiting?" means waiting on.
                    if asked {
                        self.s.state = State::WaitingForHuman {
                            handoff,
                            desk_conversation_id: desk_id,
                            asked_to_keep_waiting: false,
                        };
                        self.arm(TimerKind::Wait, self.agent.policy.wait_timeout_secs);
                    }
                }
                Ok(())
            }
            EventKind::UserEnded => {
                self.end_by_user(&handoff, MessageKey::RequestCancelled, 0);
                Ok(())
            }
            EventKind::DeskOpened { handoff_id, desk_conversation_id } => {
                self.desk_opened(handoff, desk_id, asked, handoff_id, desk_conversation_id)
            }
            EventKind::DeskOpenFailed { handoff_id, .. } => {
                self.desk_open_failed(&handoff, handoff_id, "the desk could not be reached", 0)
            }
            EventKind::HumanMessage { desk_conversation_id, text } => {
                if !matches_desk(desk_conversation_id) {
                    return Err(Ignored::StaleHandoff);
                }
                let handoff_id = handoff.id.clone();
                self.s.state =
                    State::WithHuman { handoff, desk_conversation_id: desk_conversation_id.clone(), human_messages: 1 };
                self.say(MessageKey::HumanJoined);
                self.s.push_turn(Role::Human, text, self.now);
                self.relay_human(&handoff_id, text);
                self.arm(TimerKind::Session, self.agent.policy.session_timeout_secs);
                Ok(())
            }
            EventKind::HumanClosed { desk_conversation_id } => {
                if !matches_desk(desk_conversation_id) {
                    return Err(Ignored::StaleHandoff);
                }
                self.back_to_bot(&handoff, "the desk closed the request before anyone replied", 0);
                self.say(MessageKey::HumanEnded);
                Ok(())
            }
            EventKind::TimerFired { generation } => {
                self.check_timer(*generation)?;
                if asked {
                    self.fx.push(Effect::CloseDesk { handoff_id: handoff.id.clone(), reason: CloseReason::Timeout });
                    self.back_to_bot(&handoff, "nobody answered in time", 0);
                    self.say(MessageKey::RequestTimedOut);
                } else {
                    self.s.state =
                        State::WaitingForHuman { handoff, desk_conversation_id: desk_id, asked_to_keep_waiting: true };
                    let question = OutMessage {
                        from: Role::System,
                        text: self.msg(MessageKey::WaitTimeoutQuestion),
                        buttons: vec![
                            Button { label: self.msg(MessageKey::KeepWaiting), value: KEEP_WAITING_VALUE.into() },
                            Button { label: self.msg(MessageKey::EndRequest), value: END_VALUE.into() },
                        ],
                        escalation: None,
                    };
                    self.send(question);
                    self.arm(TimerKind::WaitReply, self.agent.policy.wait_reply_timeout_secs);
                }
                Ok(())
            }
            EventKind::BrainReplied { .. } | EventKind::BrainFailed { .. } => Err(Ignored::LateBrainReply),
            EventKind::HandoffRequested { .. } => Err(Ignored::AlreadyHandedOff),
            EventKind::TeamOnline { .. } => Err(Ignored::StaleHandoff),
            EventKind::UserSetEmail { .. } => Ok(()),
            EventKind::FallbackDone { detail } => {
                self.fallback_done(detail);
                Ok(())
            }
            EventKind::Wake | EventKind::ParamsSet { .. } | EventKind::SessionStarted | EventKind::SessionEnded => {
                Ok(())
            }
        }
    }

    fn with_human(&mut self, handoff: Handoff, desk_id: String, count: u32, ev: &EventKind) -> Result<(), Ignored> {
        match ev {
            // A "keep waiting" button pressed after the human joined: nothing for the human.
            EventKind::UserMessage { text, .. } if text.trim() == KEEP_WAITING_VALUE => Err(Ignored::StaleTimer),
            EventKind::UserMessage { text, .. } => {
                let t = text.trim();
                if t == END_VALUE || phrases::matches(t, &self.agent.policy.end_phrases) {
                    self.end_by_user(&handoff, MessageKey::UserEnded, count);
                } else {
                    self.s.push_turn(Role::User, text, self.now);
                    self.fx.push(Effect::PostToDesk { handoff_id: handoff.id.clone(), text: text.clone() });
                    // The user replied: the session timeout only runs after the human's last message.
                    if self.s.timer.take().is_some() {
                        self.fx.push(Effect::CancelTimer);
                    }
                }
                Ok(())
            }
            EventKind::UserEnded => {
                self.end_by_user(&handoff, MessageKey::UserEnded, count);
                Ok(())
            }
            EventKind::HumanMessage { desk_conversation_id, text } => {
                if *desk_conversation_id != desk_id {
                    return Err(Ignored::StaleHandoff);
                }
                let handoff_id = handoff.id.clone();
                self.s.state = State::WithHuman { handoff, desk_conversation_id: desk_id, human_messages: count + 1 };
                self.s.push_turn(Role::Human, text, self.now);
                self.relay_human(&handoff_id, text);
                self.arm(TimerKind::Session, self.agent.policy.session_timeout_secs);
                Ok(())
            }
            EventKind::HumanClosed { desk_conversation_id } => {
                if *desk_conversation_id != desk_id {
                    return Err(Ignored::StaleHandoff);
                }
                self.back_to_bot(&handoff, "the human ended the session", count);
                self.say(MessageKey::HumanEnded);
                Ok(())
            }
            EventKind::TimerFired { generation } => {
                self.check_timer(*generation)?;
                self.fx.push(Effect::CloseDesk { handoff_id: handoff.id.clone(), reason: CloseReason::Timeout });
                self.back_to_bot(&handoff, "the user did not reply in time", count);
                self.say(MessageKey::SessionTimedOut);
                Ok(())
            }
            EventKind::DeskOpened { .. } | EventKind::DeskOpenFailed { .. } | EventKind::TeamOnline { .. } => {
                Err(Ignored::StaleHandoff)
            }
            EventKind::BrainReplied { .. } | EventKind::BrainFailed { .. } => Err(Ignored::LateBrainReply),
            EventKind::HandoffRequested { .. } => Err(Ignored::AlreadyHandedOff),
            EventKind::UserSetEmail { .. } => Ok(()),
            EventKind::FallbackDone { detail } => {
                self.fallback_done(detail);
                Ok(())
            }
            EventKind::Wake | EventKind::ParamsSet { .. } | EventKind::SessionStarted | EventKind::SessionEnded => {
                Ok(())
            }
        }
    }

    /// A conversation transferred inside the desk's messenger: the user and the human talk
    /// there directly, so nothing is relayed and no timer runs; the hub keeps the turns for
    /// the bot's context and takes the conversation back when the desk completes it.
    fn transferred(
        &mut self,
        handoff: Handoff,
        desk_id: Option<String>,
        count: u32,
        ev: &EventKind,
    ) -> Result<(), Ignored> {
        let matches_desk = |d: &str| desk_id.as_deref().map_or(d == self.s.key.user, |own| own == d);
        match ev {
            EventKind::UserMessage { text, .. } => {
                self.s.push_turn(Role::User, text, self.now);
                Ok(())
            }
            EventKind::DeskOpened { handoff_id, desk_conversation_id } => {
                self.desk_opened(handoff, desk_id, false, handoff_id, desk_conversation_id)
            }
            EventKind::DeskOpenFailed { handoff_id, .. } => {
                self.desk_open_failed(&handoff, handoff_id, "the transfer failed", count)
            }
            EventKind::HumanMessage { desk_conversation_id, text } => {
                if !matches_desk(desk_conversation_id) {
                    return Err(Ignored::StaleHandoff);
                }
                self.s.push_turn(Role::Human, text, self.now);
                self.s.state = State::WithHuman {
                    handoff,
                    desk_conversation_id: desk_conversation_id.clone(),
                    human_messages: count + 1,
                };
                Ok(())
            }
            EventKind::HumanClosed { desk_conversation_id } => {
                if !matches_desk(desk_conversation_id) {
                    return Err(Ignored::StaleHandoff);
                }
                // The desk completed its conversation: nothing more can be said in it.
                self.back_to_bot(&handoff, "the desk completed the conversation", count);
                Ok(())
            }
            EventKind::UserEnded => {
                self.back_to_bot(&handoff, "the user ended the session", count);
                Ok(())
            }
            EventKind::TimerFired { .. } => Err(Ignored::StaleTimer),
            EventKind::BrainReplied { .. } | EventKind::BrainFailed { .. } => Err(Ignored::LateBrainReply),
            EventKind::HandoffRequested { .. } => Err(Ignored::AlreadyHandedOff),
            EventKind::TeamOnline { .. } => Err(Ignored::StaleHandoff),
            EventKind::UserSetEmail { .. }
            | EventKind::Wake
            | EventKind::ParamsSet { .. }
            | EventKind::SessionStarted
            | EventKind::SessionEnded => Ok(()),
            EventKind::FallbackDone { detail } => {
                self.fallback_done(detail);
                Ok(())
            }
        }
    }

    /// The desk named its conversation for the pending handoff (once).
    fn desk_opened(
        &mut self,
        handoff: Handoff,
        desk_id: Option<String>,
        asked: bool,
        handoff_id: &str,
        desk_conversation_id: &str,
    ) -> Result<(), Ignored> {
        if handoff_id != handoff.id || desk_id.is_some() {
            return Err(Ignored::StaleHandoff);
        }
        self.s.state = State::WaitingForHuman {
            handoff,
            desk_conversation_id: Some(desk_conversation_id.to_string()),
            asked_to_keep_waiting: asked,
        };
        Ok(())
    }

    /// The desk refused the pending handoff for good: tell the user, try the fallback.
    fn desk_open_failed(
        &mut self,
        handoff: &Handoff,
        handoff_id: &str,
        how: &str,
        human_turns: u32,
    ) -> Result<(), Ignored> {
        if handoff_id != handoff.id {
            return Err(Ignored::StaleHandoff);
        }
        self.back_to_bot(handoff, how, human_turns);
        self.say(MessageKey::DeskFailed);
        self.escalate(self.last_user_text(), handoff.reason.clone());
        Ok(())
    }

    fn check_timer(&mut self, generation: u64) -> Result<(), Ignored> {
        match self.s.timer {
            Some(t) if t.generation == generation => {
                self.s.timer = None;
                Ok(())
            }
            _ => Err(Ignored::StaleTimer),
        }
    }

    /// Start a handoff for `question`: outside service hours or with the desk down, answer
    /// and hand the request to the fallback; otherwise ask for an e-mail first where the
    /// channel needs one, then open the desk.
    fn start_handoff(&mut self, question: String, reason: String) {
        let (to_caller, ask_first) = match self.agent.api.as_ref().map(|a| &a.escalation) {
            Some(ApiEscalation::Caller { transfer_to, ask_team_online }) if self.s.key.channel == Channel::Api => {
                (Some(transfer_to), *ask_team_online)
            }
            _ => (None, false),
        };
        if to_caller.is_none() && matches!(self.agent.desk, DeskConfig::None) {
            self.say(MessageKey::NoDesk);
            self.escalate(question, reason);
            return;
        }
        if let Some(schedule) = self.agent.hours.as_ref().and_then(|h| h.compile().ok()) {
            if !schedule.is_open(self.now) {
                let text = match schedule.next_opening(self.now) {
                    Some(next) => self.msg(MessageKey::OutOfHours).replace("{next_opening}", &schedule.describe(next)),
                    None => self.msg(MessageKey::OutOfHoursNoNext),
                };
                self.send(OutMessage::new(Role::System, text));
                self.escalate(question, format!("{reason}; outside service hours"));
                return;
            }
        }
        if let Some(transfer_to) = to_caller {
            if ask_first {
                self.fx.push(Effect::AskTeamOnline { question, reason });
            } else {
                self.escalate_to_caller(transfer_to.clone(), reason);
            }
            return;
        }
        if self.facts.desk_status == Some(ServiceStatus::Unavailable) {
            self.say(MessageKey::DeskUnavailable);
            self.escalate(question, format!("{reason}; the desk is unavailable"));
            return;
        }
        let needs_email =
            self.agent.policy.require_email && self.s.key.channel.collects_email() && self.s.email.is_none();
        if needs_email {
            self.s.state = State::CollectingEmail { question, reason };
            self.say(MessageKey::AskEmail);
        } else {
            self.open_desk(question, reason);
        }
    }

    /// The integration's own humans take the user; the session stays with the bot.
    fn escalate_to_caller(&mut self, transfer_to: Option<String>, reason: String) {
        let escalation = Escalation { reason, transfer_to };
        self.send(OutMessage {
            escalation: Some(escalation),
            ..OutMessage::new(Role::System, self.msg(MessageKey::Waiting))
        });
    }

    /// The caller said whether its humans are online.
    fn team_online(&mut self, online: bool, question: &str, reason: &str) {
        let transfer_to = match self.agent.api.as_ref().map(|a| &a.escalation) {
            Some(ApiEscalation::Caller { transfer_to, .. }) => transfer_to.clone(),
            _ => None,
        };
        if online {
            self.escalate_to_caller(transfer_to, reason.to_string());
        } else {
            self.say(MessageKey::DeskUnavailable);
            self.escalate(question.to_string(), format!("{reason}; nobody is online"));
        }
    }

    fn open_desk(&mut self, question: String, reason: String) {
        let mode = if self.agent.desk.hosts(self.s.key.channel) { HandoffMode::Transfer } else { HandoffMode::Relay };
        let handoff = Handoff { id: self.handoff_id(), reason: reason.clone(), requested_at: self.now, mode };
        let email = match (&self.s.email, self.s.key.channel.collects_email()) {
            (Some(e), _) => e.clone(),
            (None, _) => self.agent.policy.default_email.clone(),
        };
        let request = HandoffRequest {
            handoff_id: handoff.id.clone(),
            email,
            history: self.history_before(&question),
            question,
            reason,
            params: self.shown_params(),
        };
        self.s.state = State::WaitingForHuman { handoff, desk_conversation_id: None, asked_to_keep_waiting: false };
        if mode == HandoffMode::Transfer {
            // The desk queues the user itself: say it once, then leave the conversation to it.
            self.say(MessageKey::Waiting);
            self.fx.push(Effect::OpenDesk { request });
            return;
        }
        let waiting = OutMessage {
            from: Role::System,
            text: self.msg(MessageKey::Waiting),
            buttons: vec![Button { label: self.msg(MessageKey::EndRequest), value: END_VALUE.into() }],
            escalation: None,
        };
        self.send(waiting);
        self.fx.push(Effect::OpenDesk { request });
        self.arm(TimerKind::Wait, self.agent.policy.wait_timeout_secs);
    }

    fn fallback_done(&mut self, detail: &str) {
        let text = self.msg(MessageKey::FallbackDone).replace("{detail}", detail);
        self.send(OutMessage::new(Role::System, text));
    }

    /// Pass a request no human can take to the agent's fallback (ticket, e-mail, ...).
    fn escalate(&mut self, question: String, reason: String) {
        if matches!(self.agent.fallback, FallbackConfig::None) {
            return;
        }
        let request = HandoffRequest {
            handoff_id: self.handoff_id(),
            email: self.s.email.clone().unwrap_or_else(|| self.agent.policy.default_email.clone()),
            history: self.history_before(&question),
            question,
            reason,
            params: self.shown_params(),
        };
        self.fx.push(Effect::Escalate { request });
    }

    /// The user ends: a request still waiting for a human (`RequestCancelled`) or a
    /// session with one (`UserEnded`).
    fn end_by_user(&mut self, handoff: &Handoff, told: MessageKey, human_turns: u32) {
        self.fx.push(Effect::CloseDesk { handoff_id: handoff.id.clone(), reason: CloseReason::UserClosed });
        self.back_to_bot(handoff, "the user ended the session", human_turns);
        self.say(told);
    }

    /// `human_turns`: what the human wrote in this handoff (the history keeps too few turns
    /// to count them).
    fn back_to_bot(&mut self, handoff: &Handoff, how: &str, human_turns: u32) {
        self.s.summary = Some(format!(
            "A human handoff ({}) ended: {how}; the human wrote {human_turns} message(s).",
            handoff.reason
        ));
        self.s.state = State::Bot;
        self.s.unanswered = 0;
        if self.s.timer.take().is_some() {
            self.fx.push(Effect::CancelTimer);
        }
    }

    fn arm(&mut self, kind: TimerKind, secs: u64) {
        let generation = self.s.next_timer_generation;
        self.s.next_timer_generation += 1;
        let due = self.now.plus_secs(secs);
        self.s.timer = Some(crate::session::ArmedTimer { generation, kind, due });
        self.fx.push(Effect::ScheduleTimer { generation, due, kind });
    }

    /// Deterministic, unguessable-enough id for a new handoff: derived from the
    /// conversation and the event that started it.
    fn handoff_id(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.s.key.to_string().as_bytes());
        h.update([0]);
        h.update(self.event_id.as_bytes());
        format!("ho_{}", &hex::encode(h.finalize())[..24])
    }

    fn lang(&self) -> &str {
        self.s.language.as_deref().unwrap_or(&self.agent.language)
    }

    fn msg(&self, key: MessageKey) -> String {
        messages::text(&self.agent.messages, self.lang(), key)
    }

    /// A system message; the prompts of the e-mail step speak as the bot, since they ask
    /// the user something.
    fn say(&mut self, key: MessageKey) {
        let text = self.msg(key);
        let from = match key {
            MessageKey::AskEmail | MessageKey::InvalidEmail | MessageKey::HandoffCancelled => Role::Bot,
            _ => Role::System,
        };
        self.send(OutMessage::new(from, text));
    }

    /// Queue a message for the user: split to the channel's length limit (buttons go with
    /// the last piece), the first piece answering with the channel's reply token while fresh.
    fn send(&mut self, message: OutMessage) {
        let outside_window = self.outside_window();
        if outside_window && !self.has_window_template() {
            // Nothing but a template may reach the user now; human replies are reported to
            // the desk instead (see `relay_human`), notices are not sent.
            return;
        }
        let pieces = match self.s.key.channel.max_text_units() {
            Some(max) if crate::model::utf16_len(&message.text) > max => crate::model::split_text(&message.text, max),
            _ => vec![message.text.clone()],
        };
        let last = pieces.len() - 1;
        for (i, text) in pieces.into_iter().enumerate() {
            let (buttons, escalation) =
                if i == last { (message.buttons.clone(), message.escalation.clone()) } else { (Vec::new(), None) };
            let reply_token = self.s.reply.take().filter(|r| r.valid_until > self.now).map(|r| r.token);
            self.s.last_activity_at = Some(self.now);
            self.fx.push(Effect::SendToUser {
                message: OutMessage { from: message.from, text, buttons, escalation },
                reply_token,
                outside_window,
            });
        }
    }

    /// Whether the channel's free-reply window has closed since the user's last message.
    fn outside_window(&self) -> bool {
        let Some(window) = self.s.key.channel.reply_window_secs() else { return false };
        self.s.last_user_at.is_some_and(|t| self.now > t.plus_secs(window))
    }

    fn has_window_template(&self) -> bool {
        self.agent.channels.whatsapp.as_ref().is_some_and(|w| w.window_template.is_some())
    }

    /// A human's reply for the user, or, when the channel can no longer carry it, a note to
    /// the desk that it was not delivered (never dropped silently).
    fn relay_human(&mut self, handoff_id: &str, text: &str) {
        if self.outside_window() && !self.has_window_template() {
            let note = format!(
                "[Not delivered to the user: their {} reply window has closed. Reply text: {text}]",
                self.s.key.channel.as_str()
            );
            self.fx.push(Effect::PostToDesk { handoff_id: handoff_id.to_string(), text: note });
            return;
        }
        let message = self.with_end_button(OutMessage::new(Role::Human, text.to_string()));
        self.send(message);
    }

    fn say_as(&mut self, role: Role, text: String) {
        self.s.push_turn(role, &text, self.now);
        self.send(OutMessage::new(role, text));
    }

    fn with_end_button(&self, mut m: OutMessage) -> OutMessage {
        m.buttons.push(Button { label: self.msg(MessageKey::EndChatButton), value: END_VALUE.into() });
        m
    }

    fn last_user_text(&self) -> String {
        self.s.history.iter().rev().find(|t| t.role == Role::User).map(|t| t.text.clone()).unwrap_or_default()
    }

    /// The last N user/bot/human turns, optionally without the newest (the current question).
    fn recent_history(&self, skip_newest: bool) -> Vec<Turn> {
        let end = if skip_newest { self.s.history.len().saturating_sub(1) } else { self.s.history.len() };
        let n = self.agent.policy.history_messages;
        let turns: Vec<Turn> = self.s.history[..end].iter().filter(|t| t.role != Role::System).cloned().collect();
        turns[turns.len().saturating_sub(n)..].to_vec()
    }

    /// The session parameters with the e-mail address the user gave, if any.
    fn params(&self) -> std::collections::BTreeMap<String, String> {
        let mut p = self.s.params.clone();
        if let Some(email) = &self.s.email {
            p.entry("email".into()).or_insert_with(|| email.clone());
        }
        p
    }

    /// [`Self::params`] as humans may see them: personal data masked.
    fn shown_params(&self) -> std::collections::BTreeMap<String, String> {
        let mut p = self.params();
        for k in &self.s.sanitized {
            if let Some(v) = p.get_mut(k) {
                *v = SANITIZED.to_string();
            }
        }
        p
    }

    /// Whether an Agent API session lapsed before this new input: no message for the
    /// agent's expiry period while the bot had the conversation (a human session runs on
    /// its own timeouts).
    fn api_session_expired(&self, kind: &EventKind) -> bool {
        let inbound = matches!(
            kind,
            EventKind::UserMessage { .. }
                | EventKind::SessionStarted
                | EventKind::ParamsSet { .. }
                | EventKind::HandoffRequested { .. }
        );
        if self.s.key.channel != Channel::Api {
            return false;
        }
        let expiry =
            self.agent.api.as_ref().map_or(crate::agent::DEFAULT_API_SESSION_EXPIRY_SECS, |a| a.session_expiry_secs);
        inbound
            && matches!(self.s.state, State::Bot)
            && self.s.last_activity_at.is_some_and(|t| self.now >= t.plus_secs(expiry))
    }

    /// History for the desk: the last N turns before the current question.
    fn history_before(&self, question: &str) -> Vec<Turn> {
        let newest_is_question = self.s.history.last().is_some_and(|t| t.role == Role::User && t.text == question);
        self.recent_history(newest_is_question)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn non_system(turns: &[Turn]) -> Vec<Turn> {
        turns.iter().filter(|t| t.role != Role::System).cloned().collect()
    }

    proptest! {
        /// Trimming keeps what a step reads: the newest `n + 1` user/bot/human turns (so the
        /// newest `n` before a question), the user's last turn, and the order of what it keeps.
        #[test]
        fn trimming_keeps_what_a_step_reads(roles in prop::collection::vec(0u8..4, 0..60), n in 0usize..15) {
            let role = |r: u8| match r { 0 => Role::User, 1 => Role::Bot, 2 => Role::Human, _ => Role::System };
            let key = ConversationKey::new("demo", crate::model::Channel::Widget, "u").unwrap();
            let mut s = Session::new(key);
            s.history = roles.iter().enumerate()
                .map(|(i, r)| Turn { role: role(*r), text: format!("t{i}"), at: Millis(i as i64) })
                .collect();
            let before = s.history.clone();
            s.keep_turns_for(n);
            let (all, kept) = (non_system(&before), non_system(&s.history));
            let newest = &all[all.len().saturating_sub(n + 1)..];
            prop_assert!(kept.ends_with(newest), "{kept:?} lost some of {newest:?}");
            let last_user = |h: &[Turn]| h.iter().rev().find(|t| t.role == Role::User).cloned();
            prop_assert_eq!(last_user(&s.history), last_user(&before));
            // A subsequence of the original, in order.
            let mut rest = before.iter();
            prop_assert!(s.history.iter().all(|t| rest.any(|b| b == t)));
            // Nothing kept beyond what is needed: at most n + 1 of them plus the user's turn.
            prop_assert!(kept.len() <= n + 2);
        }
    }
}
