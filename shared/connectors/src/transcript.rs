//! The first message of a conversation the hub opens in a desk for a user of another channel:
//! why, the most recent earlier messages that fit, the question, the e-mail and the channel.
//! Plain text; each desk chooses its limits and labels.

use baton_core::effect::HandoffRequest;
use baton_core::model::Role;
use baton_core::ConversationKey;

/// How one desk wants its transcript.
pub struct Style {
    /// A line before the reason (empty for none).
    pub intro: &'static str,
    /// How the AI's turns are labelled.
    pub bot: &'static str,
    /// The whole text, in characters.
    pub max_chars: usize,
    pub question_chars: usize,
    /// Each earlier message.
    pub line_chars: usize,
    /// Shown when there is no e-mail address.
    pub no_email: &'static str,
}

/// `s` cut to `max` characters, the last one an ellipsis when something was cut.
pub fn cut_chars(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

fn speaker(role: Role, bot: &'static str) -> Option<&'static str> {
    match role {
        Role::User => Some("User"),
        Role::Bot => Some(bot),
        Role::Human => Some("Agent"),
        Role::System => None,
    }
}

/// The transcript; the oldest earlier messages are left out first (marked `…`).
pub fn transcript(key: &ConversationKey, request: &HandoffRequest, style: &Style) -> String {
    let reason = format!("Reason: {}", cut_chars(request.reason.trim(), 300));
    let head = if style.intro.is_empty() { reason } else { format!("{}\n{reason}", style.intro) };
    let email = request.email.trim();
    let mut tail = format!(
        "Question: {}\n\nE-mail: {}\nChannel: {}",
        cut_chars(request.question.trim(), style.question_chars),
        if email.is_empty() { style.no_email.to_string() } else { cut_chars(email, 254) },
        key.channel.as_str()
    );
    // What the session learned (phone, customer id, ...), the e-mail shown above.
    for (k, v) in request.params.iter().filter(|(k, _)| k.as_str() != "email").take(20) {
        tail.push_str(&format!("\n{}: {}", cut_chars(k, 40), cut_chars(v, 200).replace(['\r', '\n'], " ")));
    }
    let mut budget = style.max_chars.saturating_sub(head.chars().count() + tail.chars().count() + 40);
    let mut lines: Vec<String> = Vec::new();
    let mut dropped = false;
    for turn in request.history.iter().rev() {
        let Some(who) = speaker(turn.role, style.bot) else { continue };
        let line = format!("{who}: {}", cut_chars(turn.text.trim(), style.line_chars).replace(['\r', '\n'], " "));
        let n = line.chars().count() + 1;
        if n > budget {
            dropped = true;
            break;
        }
        budget -= n;
        lines.push(line);
    }
    lines.reverse();
    let mut out = head;
    if !lines.is_empty() {
        out.push_str("\n\nEarlier messages:\n");
        if dropped {
            out.push_str("…\n");
        }
        out.push_str(&lines.join("\n"));
    }
    out.push_str("\n\n");
    out.push_str(&tail);
    cut_chars(&out, style.max_chars)
}
