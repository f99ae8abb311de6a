//! Agent config files (TOML): parse, resolve `env:` secrets, validate, and report every
//! problem with the file, line and field it concerns.

use baton_core::agent::Agent;
use baton_core::model::Secret;
use serde::Deserialize;
use std::fmt;
use std::path::Path;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentsFile {
    #[serde(default, rename = "agent")]
    agents: Vec<Agent>,
}

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: Option<usize>,
    pub field: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.problems {
            match p.line {
                Some(l) => writeln!(f, "{}:{}: {}: {}", self.file, l, p.field, p.message)?,
                None => writeln!(f, "{}: {}: {}", self.file, p.field, p.message)?,
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

pub fn load_file(path: &Path) -> Result<Vec<Agent>, ConfigError> {
    let name = path.display().to_string();
    let src = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: name.clone(),
        problems: vec![Problem { line: None, field: "file".into(), message: format!("cannot read: {e}") }],
    })?;
    parse(&name, &src, &|var| std::env::var(var).ok())
}

/// Refuse agents whose endpoints name loopback, private or link-local addresses: a hub that
/// serves beyond its own machine must not be pointed at its own network.
pub fn refuse_private_targets(agents: &[Agent]) -> anyhow::Result<()> {
    let found: Vec<String> = agents
        .iter()
        .flat_map(|a| {
            a.non_public_targets().into_iter().map(move |p| format!("agent {}: {} {}", a.id, p.path, p.message))
        })
        .collect();
    if found.is_empty() {
        return Ok(());
    }
    anyhow::bail!(
        "{}\nthis hub calls public addresses only; allow private ones (--allow-private-targets, \
         BATON_ALLOW_PRIVATE_TARGETS=true) only when the desks live on the hub's own network",
        found.join("\n")
    )
}

/// Parse and validate `src`. `env` resolves `env:NAME` secret references.
pub fn parse(file: &str, src: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Vec<Agent>, ConfigError> {
    let fail = |problems| ConfigError { file: file.to_string(), problems };
    let parsed: AgentsFile = toml::from_str(src).map_err(|e| {
        let line = e.span().map(|s| line_of(src, s.start));
        let message = e.message().to_string();
        fail(vec![Problem { line, field: "syntax".into(), message }])
    })?;
    let doc = toml_edit::ImDocument::parse(src.to_string()).ok();
    let mut problems = Vec::new();
    let mut agents = parsed.agents;
    if agents.is_empty() {
        problems.push(Problem { line: None, field: "agent".into(), message: "no [[agent]] tables in the file".into() });
    }
    let mut seen = std::collections::HashSet::new();
    for (i, agent) in agents.iter_mut().enumerate() {
        let locate = |field: &str| doc.as_ref().and_then(|d| line_of_field(d, src, i, field));
        if !seen.insert(agent.id.clone()) {
            problems.push(Problem {
                line: locate("id"),
                field: format!("agent[{i}].id"),
                message: format!("duplicate agent id {:?}", agent.id),
            });
        }
        let secrets = agent.secrets_mut();
        for (field, secret) in secrets {
            if let Err(message) = resolve_secret(secret, env) {
                problems.push(Problem { line: locate(field), field: format!("agent[{i}].{field}"), message });
            }
        }
        for p in agent.validate() {
            problems.push(Problem {
                line: locate(&p.path),
                field: format!("agent[{i}].{}", p.path),
                message: p.message,
            });
        }
    }
    if problems.is_empty() {
        Ok(agents)
    } else {
        Err(fail(problems))
    }
}

/// `env:NAME` is replaced by the environment variable, so secrets stay out of files.
fn resolve_secret(s: &mut Secret, env: &dyn Fn(&str) -> Option<String>) -> Result<(), String> {
    if let Some(var) = s.0.strip_prefix("env:") {
        match env(var) {
            Some(v) if !v.is_empty() => s.0 = v,
            _ => return Err(format!("environment variable {var} is not set")),
        }
    }
    Ok(())
}

fn line_of(src: &str, offset: usize) -> usize {
    src[..offset.min(src.len())].bytes().filter(|b| *b == b'\n').count() + 1
}

/// Line of `agent[i].<dotted path>` (parts may be indexed: `brain.faq[1].answer`); falls
/// back to the deepest part of the path that exists.
fn line_of_field(doc: &toml_edit::ImDocument<String>, src: &str, i: usize, path: &str) -> Option<usize> {
    let mut table: &toml_edit::Table = doc.get("agent")?.as_array_of_tables()?.get(i)?;
    let mut best = table.span();
    let parts: Vec<&str> = path.split('.').collect();
    for (n, part) in parts.iter().enumerate() {
        let (name, index) = match part.split_once('[') {
            Some((name, rest)) => (name, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (*part, None),
        };
        let Some(item) = table.get(name) else { break };
        best = item.span().or_else(|| item.as_value().and_then(|v| v.span())).or(best);
        let last = n + 1 == parts.len();
        let next = match (index, item) {
            (Some(ix), toml_edit::Item::ArrayOfTables(a)) => a.get(ix),
            (None, toml_edit::Item::Table(t)) => Some(t),
            _ => None,
        };
        match next {
            Some(t) => {
                best = t.span().or(best);
                table = t;
            }
            None if last => {}
            None => break,
        }
    }
    best.map(|s| line_of(src, s.start))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    const GOOD: &str = r#"
[[agent]]
id = "shop"
name = "Shop"

[agent.desk]
kind = "webhook"
url = "https://desk.example.com/hooks"
username = "hub"
password = "env:DESK_PW"

[agent.brain]
kind = "faq"

[[agent.brain.faq]]
question = "What are your opening hours?"
answer = "9-17"
"#;

    #[test]
    fn parses_and_resolves_env_secrets() {
        let agents = parse("a.toml", GOOD, &|v| (v == "DESK_PW").then(|| "s3cret".to_string())).unwrap();
        assert_eq!(agents.len(), 1);
        match &agents[0].desk {
            baton_core::agent::DeskConfig::Webhook { password, .. } => {
                assert_eq!(password.as_ref().unwrap().expose(), "s3cret")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn missing_env_names_field_and_line() {
        let err = parse("a.toml", GOOD, &no_env).unwrap_err();
        assert_eq!(err.problems.len(), 1);
        assert_eq!(err.problems[0].field, "agent[0].desk.password");
        assert_eq!(err.problems[0].line, Some(10));
        assert!(err.to_string().contains("a.toml:10: agent[0].desk.password: environment variable DESK_PW is not set"));
        assert!(!err.to_string().contains("s3cret"));
    }

    #[test]
    fn semantic_problems_have_lines() {
        let src = "[[agent]]\nid = \"ok\"\n\n[agent.policy]\nwait_timeout_secs = 0\n\n[[agent]]\nid = \"Bad Id\"\n";
        let err = parse("b.toml", src, &no_env).unwrap_err();
        let got: Vec<_> = err.problems.iter().map(|p| (p.field.as_str(), p.line)).collect();
        assert_eq!(got, vec![("agent[0].policy.wait_timeout_secs", Some(5)), ("agent[1].id", Some(8))]);
    }

    #[test]
    fn syntax_and_unknown_fields_are_reported_with_line() {
        let err = parse("c.toml", "[[agent]]\nid = \"x\"\ncolour = 3\n", &no_env).unwrap_err();
        assert_eq!(err.problems[0].line, Some(3));
        assert!(err.problems[0].message.contains("colour"), "{}", err.problems[0].message);
        let err = parse("c.toml", "[[agent]\n", &no_env).unwrap_err();
        assert_eq!(err.problems[0].field, "syntax");
        assert_eq!(err.problems[0].line, Some(1));
    }

    #[test]
    fn faq_entry_problem_points_into_the_array() {
        let src = "[[agent]]\nid = \"x\"\n[agent.brain]\nkind = \"faq\"\n[[agent.brain.faq]]\nquestion = \"q\"\nanswer = \"a\"\n[[agent.brain.faq]]\nquestion = \"q2\"\nanswer = \" \"\n";
        let err = parse("d.toml", src, &no_env).unwrap_err();
        assert_eq!(err.problems[0].field, "agent[0].brain.faq[1].answer");
        assert_eq!(err.problems[0].line, Some(10));
    }
}

#[cfg(test)]
mod example_file {
    #[test]
    fn the_shipped_example_is_valid() {
        let src = include_str!("../../examples/agents.toml");
        let env = |v: &str| match v {
            "SHOP_DESK_PASSWORD" => Some("pw".to_string()),
            "SHOP_DESK_SIGNING_SECRET" => Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_string()),
            _ => None,
        };
        let agents = super::parse("examples/agents.toml", src, &env).unwrap();
        assert_eq!(agents[0].id, "shop");
        assert_eq!(agents[0].policy.history_messages, 10);
    }

    /// The commented block that starts at `marker`, uncommented, up to the next blank line.
    fn block(src: &str, marker: &str) -> String {
        let start = src.find(marker).expect("marker in the example");
        src[start..]
            .lines()
            .take_while(|l| l.starts_with('#'))
            .map(|l| l.strip_prefix("# ").unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn the_commented_agent_api_and_hosted_agent_sections_are_valid() {
        let src = include_str!("../../examples/agents.toml");
        let env = |v: &str| match v {
            "SHOP_API_SIGNING_SECRET" => Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_string()),
            "SHOP_HOSTED_AGENT_KEY" => Some("ua-key".to_string()),
            "SHOP_HOSTED_WEBHOOK_SECRET" => Some("a-webhook-secret-of-24-chars".to_string()),
            _ => None,
        };
        let toml = format!(
            "[[agent]]\nid = \"shop\"\n{}\n{}\n",
            block(src, "# [agent.brain]\n# kind = \"hosted\""),
            block(src, "# [agent.api]")
        );
        let agents = super::parse("example.toml", &toml, &env).unwrap();
        assert!(matches!(agents[0].brain, baton_core::agent::BrainConfig::Hosted(_)));
        let api = agents[0].api.as_ref().unwrap();
        assert!(matches!(api.escalation, baton_core::agent::ApiEscalation::Caller { transfer_to: Some(_), .. }));
    }
}
