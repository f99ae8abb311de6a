//! System messages per language, with defaults in EN, DE, HR, ZH, FR and per-agent overrides.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const LANGUAGES: [&str; 5] = ["en", "de", "hr", "zh", "fr"];

/// Every system message the hub sends on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageKey {
    AskEmail,
    InvalidEmail,
    HandoffCancelled,
    Waiting,
    HumanJoined,
    WaitTimeoutQuestion,
    KeepWaiting,
    EndRequest,
    KeptWaiting,
    RequestTimedOut,
    UserEnded,
    HumanEnded,
    SessionTimedOut,
    NoDesk,
    DeskFailed,
    NotUnderstood,
    EndChatButton,
    /// `{next_opening}` is replaced by the next opening time.
    OutOfHours,
    OutOfHoursNoNext,
    DeskUnavailable,
    /// `{detail}` is replaced by what the fallback did (e.g. "ticket T-17").
    FallbackDone,
    /// The user ended a request before anyone from the team joined.
    RequestCancelled,
}

/// `messages.<lang>.<key> = "text"` in the agent config.
pub type MessageOverrides = BTreeMap<String, BTreeMap<MessageKey, String>>;

/// The agent's text for `key` in `lang`, falling back to the built-in default,
/// then to English.
pub fn text(overrides: &MessageOverrides, lang: &str, key: MessageKey) -> String {
    if let Some(t) = overrides.get(lang).and_then(|m| m.get(&key)) {
        return t.clone();
    }
    default_text(lang, key).to_string()
}

pub fn default_text(lang: &str, key: MessageKey) -> &'static str {
    use MessageKey::*;
    let row: [&'static str; 5] = match key {
        AskEmail => [
            "Before I connect you with a person, please tell me your e-mail address (or write \"cancel\").",
            "Bevor ich Sie mit einer Person verbinde, nennen Sie mir bitte Ihre E-Mail-Adresse (oder schreiben Sie \"abbrechen\").",
            "Prije nego što vas povežem s osobom, molim upišite svoju e-mail adresu (ili napišite \"odustani\").",
            "在为您转接人工客服之前，请告诉我您的电子邮箱地址（或输入“取消”）。",
            "Avant de vous mettre en relation avec une personne, indiquez votre adresse e-mail (ou écrivez « annuler »).",
        ],
        InvalidEmail => [
            "That does not look like an e-mail address. Please try again, or write \"cancel\".",
            "Das sieht nicht wie eine E-Mail-Adresse aus. Bitte versuchen Sie es erneut oder schreiben Sie \"abbrechen\".",
            "To ne izgleda kao e-mail adresa. Pokušajte ponovno ili napišite \"odustani\".",
            "这看起来不是有效的电子邮箱地址。请重新输入，或输入“取消”。",
            "Cela ne ressemble pas à une adresse e-mail. Réessayez, ou écrivez « annuler ».",
        ],
        HandoffCancelled => [
            "OK, I will not connect you with a person. How else can I help?",
            "In Ordnung, ich verbinde Sie nicht. Wie kann ich sonst helfen?",
            "U redu, neću vas povezati s osobom. Kako vam još mogu pomoći?",
            "好的，已取消转人工。还有什么可以帮您？",
            "D'accord, je ne vous mets pas en relation. Comment puis-je vous aider autrement ?",
        ],
        Waiting => [
            "I am connecting you with a person. Please wait a moment.",
            "Ich verbinde Sie mit einer Person. Bitte warten Sie einen Moment.",
            "Povezujem vas s osobom. Molim pričekajte trenutak.",
            "正在为您转接人工客服，请稍候。",
            "Je vous mets en relation avec une personne. Veuillez patienter.",
        ],
        HumanJoined => [
            "A person from our team has joined the chat.",
            "Eine Person aus unserem Team ist dem Chat beigetreten.",
            "Osoba iz našeg tima pridružila se razgovoru.",
            "人工客服已加入对话。",
            "Une personne de notre équipe a rejoint la conversation.",
        ],
        WaitTimeoutQuestion => [
            "Nobody from our team is available yet. Do you want to keep waiting or end the request?",
            "Noch ist niemand aus unserem Team verfügbar. Möchten Sie weiter warten oder die Anfrage beenden?",
            "Još nitko iz našeg tima nije dostupan. Želite li nastaviti čekati ili završiti zahtjev?",
            "暂时没有客服可以接入。您要继续等待还是结束请求？",
            "Personne de notre équipe n'est encore disponible. Voulez-vous continuer à attendre ou terminer la demande ?",
        ],
        KeepWaiting => ["Keep waiting", "Weiter warten", "Nastavi čekati", "继续等待", "Continuer à attendre"],
        EndRequest => ["End request", "Anfrage beenden", "Završi zahtjev", "结束请求", "Terminer la demande"],
        KeptWaiting => [
            "OK, we keep waiting for the next free person.",
            "In Ordnung, wir warten weiter auf die nächste freie Person.",
            "U redu, čekamo sljedeću slobodnu osobu.",
            "好的，我们继续为您等待客服。",
            "D'accord, nous continuons d'attendre la prochaine personne disponible.",
        ],
        RequestTimedOut => [
            "The request was closed because nobody could answer in time. You are chatting with the assistant again.",
            "Die Anfrage wurde geschlossen, da niemand rechtzeitig antworten konnte. Sie chatten wieder mit dem Assistenten.",
            "Zahtjev je zatvoren jer nitko nije mogao odgovoriti na vrijeme. Ponovno razgovarate s asistentom.",
            "由于无人及时接入，请求已关闭。您将继续与智能助手对话。",
            "La demande a été fermée car personne n'a pu répondre à temps. Vous discutez à nouveau avec l'assistant.",
        ],
        UserEnded => [
            "You ended the chat with our team. You are chatting with the assistant again.",
            "Sie haben den Chat mit unserem Team beendet. Sie chatten wieder mit dem Assistenten.",
            "Završili ste razgovor s našim timom. Ponovno razgovarate s asistentom.",
            "您已结束人工对话。您将继续与智能助手对话。",
            "Vous avez terminé la conversation avec notre équipe. Vous discutez à nouveau avec l'assistant.",
        ],
        HumanEnded => [
            "Our team member ended the chat. You are chatting with the assistant again.",
            "Unser Teammitglied hat den Chat beendet. Sie chatten wieder mit dem Assistenten.",
            "Član našeg tima završio je razgovor. Ponovno razgovarate s asistentom.",
            "客服已结束对话。您将继续与智能助手对话。",
            "Notre collaborateur a terminé la conversation. Vous discutez à nouveau avec l'assistant.",
        ],
        SessionTimedOut => [
            "The chat with our team ended because there was no reply for a while. You are chatting with the assistant again.",
            "Der Chat mit unserem Team wurde beendet, da eine Weile keine Antwort kam. Sie chatten wieder mit dem Assistenten.",
            "Razgovor s našim timom završio je jer neko vrijeme nije bilo odgovora. Ponovno razgovarate s asistentom.",
            "由于长时间未回复，人工对话已结束。您将继续与智能助手对话。",
            "La conversation avec notre équipe s'est terminée faute de réponse. Vous discutez à nouveau avec l'assistant.",
        ],
        NoDesk => [
            "Sorry, no human support is set up for this assistant.",
            "Leider ist für diesen Assistenten kein menschlicher Support eingerichtet.",
            "Nažalost, za ovog asistenta nije postavljena ljudska podrška.",
            "抱歉，此助手未配置人工客服。",
            "Désolé, aucun support humain n'est configuré pour cet assistant.",
        ],
        DeskFailed => [
            "Sorry, we could not reach our team right now. Please try again later.",
            "Leider konnten wir unser Team gerade nicht erreichen. Bitte versuchen Sie es später erneut.",
            "Nažalost, trenutno ne možemo dobiti naš tim. Pokušajte ponovno kasnije.",
            "抱歉，暂时无法联系到客服团队，请稍后再试。",
            "Désolé, nous n'avons pas pu joindre notre équipe. Veuillez réessayer plus tard.",
        ],
        NotUnderstood => [
            "Sorry, I don't know the answer to that. Write \"human\" to talk to a person.",
            "Das weiß ich leider nicht. Schreiben Sie \"Mitarbeiter\", um mit einer Person zu sprechen.",
            "Nažalost, ne znam odgovor na to. Napišite \"agent\" za razgovor s osobom.",
            "抱歉，我不知道这个问题的答案。输入“人工”可转接人工客服。",
            "Désolé, je ne connais pas la réponse. Écrivez « conseiller » pour parler à une personne.",
        ],
        EndChatButton => ["End chat", "Chat beenden", "Završi razgovor", "结束对话", "Terminer la conversation"],
        OutOfHours => [
            "Our team is not available right now. We are back on {next_opening}.",
            "Unser Team ist gerade nicht erreichbar. Wir sind ab {next_opening} wieder da.",
            "Naš tim trenutno nije dostupan. Ponovno smo tu od {next_opening}.",
            "客服团队目前不在服务时间内。我们将于 {next_opening} 恢复服务。",
            "Notre équipe n'est pas disponible pour le moment. Nous serons de retour le {next_opening}.",
        ],
        OutOfHoursNoNext => [
            "Our team is not available right now.",
            "Unser Team ist gerade nicht erreichbar.",
            "Naš tim trenutno nije dostupan.",
            "客服团队目前不在服务时间内。",
            "Notre équipe n'est pas disponible pour le moment.",
        ],
        DeskUnavailable => [
            "Sorry, our team cannot be reached right now.",
            "Leider ist unser Team gerade nicht erreichbar.",
            "Nažalost, naš tim trenutno nije dostupan.",
            "抱歉，目前无法联系到客服团队。",
            "Désolé, notre équipe ne peut pas être jointe pour le moment.",
        ],
        RequestCancelled => [
            "You cancelled the request. You are chatting with the assistant again.",
            "Sie haben die Anfrage abgebrochen. Sie chatten wieder mit dem Assistenten.",
            "Otkazali ste zahtjev. Ponovno razgovarate s asistentom.",
            "您已取消转人工请求。您将继续与智能助手对话。",
            "Vous avez annulé la demande. Vous discutez à nouveau avec l'assistant.",
        ],
        FallbackDone => [
            "We have passed your request on ({detail}) and will get back to you.",
            "Wir haben Ihre Anfrage weitergeleitet ({detail}) und melden uns bei Ihnen.",
            "Vaš smo zahtjev proslijedili ({detail}) i javit ćemo vam se.",
            "我们已转交您的请求（{detail}），稍后会与您联系。",
            "Nous avons transmis votre demande ({detail}) et reviendrons vers vous.",
        ],
    };
    let idx = LANGUAGES.iter().position(|l| *l == lang).unwrap_or(0);
    row[idx]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn override_wins_then_language_then_english() {
        let mut o = MessageOverrides::new();
        o.entry("de".into()).or_default().insert(MessageKey::Waiting, "Moment!".into());
        assert_eq!(text(&o, "de", MessageKey::Waiting), "Moment!");
        assert!(text(&o, "fr", MessageKey::Waiting).starts_with("Je vous"));
        assert!(text(&o, "xx", MessageKey::Waiting).starts_with("I am connecting"));
    }
}
