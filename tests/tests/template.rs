//! The SAM template (`template.yaml` at the repository root) against the linter and the workspace:
//! - `cfn-lint template.yaml` exits 0 and prints nothing (warnings fail too; a missing cfn-lint fails);
//! - every `AWS::Serverless::Function` builds a crate `functions/<name>` (CodeUri, BuildProperties
//!   Binary, the crate's package name and its `[[bin]]` name, if declared, all say `<name>`), every
//!   `functions/*/Cargo.toml` crate has a function, and every function crate is a workspace member
//!   (otherwise `sam build` cannot build it);
//! - every URL output names a route that exists: on a function URL, a route of the function the
//!   URL serves, under the URL's own condition; on the HTTP API, a route of some function.
//!
//! The template is read as text: CloudFormation tags (`!Ref`, `!GetAtt`, ...) make generic YAML parsers
//! awkward, and only a few scalar keys of each resource are needed here.

use std::collections::BTreeSet;
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

#[test]
fn cfn_lint_passes_without_findings() {
    let root = repo_root();
    let output = match Command::new("cfn-lint").arg("template.yaml").current_dir(&root).output() {
        Ok(output) => output,
        Err(e) if e.kind() == ErrorKind::NotFound => panic!(
            "cfn-lint is not installed (or not on PATH); this test never skips. Install it with \
             `pip install cfn-lint` and run the tests again."
        ),
        Err(e) => panic!("cannot run cfn-lint: {e}"),
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.trim().is_empty() && stderr.trim().is_empty(),
        "`cfn-lint template.yaml` must exit 0 and print nothing (warnings count), got {}\n\
         --- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        output.status
    );
}

#[test]
fn every_function_has_a_crate_and_every_crate_a_function() {
    let root = repo_root();
    let template = read(&root.join("template.yaml"));
    let problems = check_function_crates(&root, &template);
    assert!(problems.is_empty(), "template.yaml and functions/ disagree:\n- {}", problems.join("\n- "));
}

#[test]
fn function_crates_are_workspace_members() {
    let root = repo_root();
    let members = workspace_members(&read(&root.join("Cargo.toml")));
    let missing: Vec<String> = function_crate_dirs(&root)
        .into_iter()
        .filter(|name| !is_member(&members, &format!("functions/{name}")))
        .collect();
    assert!(
        missing.is_empty(),
        "these function crates are not members of the root workspace (add \"functions/<name>\" or \
         \"functions/*\" to [workspace] members): {missing:?}; members are {members:?}"
    );
}

#[test]
fn url_outputs_name_routes_of_the_functions_behind_them() {
    let template = read(&repo_root().join("template.yaml"));
    let problems = check_url_outputs(&template);
    assert!(problems.is_empty(), "template.yaml's URL outputs:\n- {}", problems.join("\n- "));
}

// ------------------------------------------------------------------------------------------- checks

/// One `AWS::Serverless::Function` of the template, with the scalars this test needs.
#[derive(Debug, Default, PartialEq)]
struct Function {
    logical_id: String,
    code_uri: Option<String>,
    build_method: Option<String>,
    binary: Option<String>,
}

/// Every mismatch between the template's functions and the crates under `functions/`, as messages.
fn check_function_crates(root: &Path, template: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let functions = serverless_functions(template);
    if functions.is_empty() {
        problems.push("no AWS::Serverless::Function resource found in template.yaml".to_string());
    }
    let mut referenced = BTreeSet::new();
    for f in &functions {
        let id = &f.logical_id;
        let Some(code_uri) = f.code_uri.as_deref() else {
            problems.push(format!("{id}: no CodeUri (expected CodeUri: functions/<crate>)"));
            continue;
        };
        let dir = code_uri.trim_start_matches("./").trim_end_matches('/');
        let Some(name) = dir.strip_prefix("functions/").filter(|n| !n.is_empty() && !n.contains('/')) else {
            problems.push(format!("{id}: CodeUri {code_uri:?} is not a crate directory functions/<name>"));
            continue;
        };
        referenced.insert(name.to_string());
        if f.build_method.as_deref() != Some("rust-cargolambda") {
            problems.push(format!("{id}: Metadata.BuildMethod is {:?}, expected \"rust-cargolambda\"", f.build_method));
        }
        match f.binary.as_deref() {
            Some(binary) if binary == name => {}
            other => problems.push(format!(
                "{id}: Metadata.BuildProperties.Binary is {other:?}, expected {name:?} (the crate's binary)"
            )),
        }
        let manifest = root.join(dir).join("Cargo.toml");
        match fs::read_to_string(&manifest) {
            Err(_) => {
                problems.push(format!("{id}: CodeUri {code_uri} has no crate ({} is missing)", manifest.display()))
            }
            Ok(text) => {
                match package_name(&text) {
                    Some(package) if package == name => {}
                    other => problems.push(format!(
                        "{id}: {dir}/Cargo.toml has package name {other:?}, expected {name:?} (package, binary and \
                         directory share one name)"
                    )),
                }
                let bins = table_names(&text, "[[bin]]");
                if !bins.is_empty() && !bins.iter().any(|b| b == name) {
                    problems.push(format!("{id}: {dir}/Cargo.toml declares binaries {bins:?} but none named {name:?}"));
                }
            }
        }
    }
    let mut seen = BTreeSet::new();
    for f in &functions {
        if let Some(dir) = &f.code_uri {
            if !seen.insert(dir.trim_start_matches("./").trim_end_matches('/')) {
                problems.push(format!("{}: CodeUri {dir} is used by more than one function", f.logical_id));
            }
        }
    }
    for name in function_crate_dirs(root) {
        if !referenced.contains(&name) {
            problems.push(format!(
                "crate functions/{name} has no AWS::Serverless::Function in template.yaml (CodeUri: functions/{name})"
            ));
        }
    }
    problems
}

/// Names of the directories `functions/<name>` that hold a `Cargo.toml`, sorted.
fn function_crate_dirs(root: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(root.join("functions")) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().join("Cargo.toml").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Every URL output whose path is not a route where it points, as messages: `${X.FunctionUrl}path`
/// must be a route of the function `X` targets (used under `X`'s condition, when it has one), and
/// `https://${HttpApi}...path` a route of some function on the HTTP API. Paths ending in `...`
/// name a family of routes, and base URLs (`*BaseUrl*` outputs) the stem of theirs.
fn check_url_outputs(template: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let resources = blocks(template, "Resources");
    let api_routes: Vec<String> = resources.iter().flat_map(|(_, b)| routes(b)).collect();
    let api = "https://${HttpApi}.execute-api.${AWS::Region}.${AWS::URLSuffix}";
    for (name, block) in blocks(template, "Outputs") {
        for line in block.lines() {
            let value = line.trim().trim_start_matches("- ").trim_start_matches("Value: ");
            let Some(value) = value.strip_prefix("!Sub ") else {
                continue;
            };
            let value = value.trim_matches('"');
            // A base URL (a desk appends its paths to it) names the stem of its routes.
            let base = |path: &str| if name.contains("BaseUrl") { format!("{path}/...") } else { path.to_string() };
            if let Some(rest) = value.strip_prefix(api).filter(|rest| !rest.is_empty()) {
                if !has_route(&api_routes, &base(rest)) {
                    problems.push(format!("{name}: {rest} is no route of the HTTP API"));
                }
            } else if let Some((url, path)) = value.strip_prefix("${").and_then(|v| v.split_once(".FunctionUrl}")) {
                let url_block = resource(&resources, url);
                let function = url_block.lines().find_map(|l| scalar(l, "TargetFunctionArn"));
                let Some(function) = function.and_then(|f| f.strip_prefix("!GetAtt ").map(str::to_string)) else {
                    problems.push(format!("{name}: {url} is no function URL of the template"));
                    continue;
                };
                let function = function.trim_end_matches(".Arn");
                if !has_route(&routes(resource(&resources, function)), &base(&format!("/{path}"))) {
                    problems.push(format!("{name}: /{path} is no route of {function}, which {url} serves"));
                }
                let condition = url_block.lines().find_map(|l| scalar(l, "Condition"));
                let guarded = |c: &str| block.contains(&format!("Condition: {c}")) || block.contains(&format!("- {c}"));
                if let Some(c) = condition.filter(|c| !guarded(c)) {
                    problems.push(format!("{name}: uses {url} outside its condition {c}"));
                }
            }
        }
    }
    problems
}

/// The `Path:` of every HttpApi event in a resource's text.
fn routes(block: &str) -> Vec<String> {
    block.lines().filter_map(|l| scalar(l, "Path")).collect()
}

/// Whether `path` is one of `routes`, or the stem of some when it ends in `/...`.
fn has_route(routes: &[String], path: &str) -> bool {
    match path.strip_suffix("/...") {
        Some(stem) => routes.iter().any(|r| r.starts_with(&format!("{stem}/"))),
        None => routes.iter().any(|r| r == path),
    }
}

/// The text of resource `logical_id` among `resources` (empty when there is none).
fn resource<'a>(resources: &'a [(String, String)], logical_id: &str) -> &'a str {
    resources.iter().find(|(k, _)| k == logical_id).map_or("", |(_, b)| b.as_str())
}

// ------------------------------------------------------------------------------------- text parsing

fn indent_of(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

/// Blank and comment-only lines carry no structure.
fn is_content(line: &str) -> bool {
    let t = line.trim();
    !t.is_empty() && !t.starts_with('#')
}

/// The scalar after `key:` on this line, unquoted and without a trailing comment; `None` when the
/// line is not `key: value` (an empty value means a nested mapping, also `None`).
fn scalar(line: &str, key: &str) -> Option<String> {
    let rest = line.trim().strip_prefix(key)?.strip_prefix(':')?;
    let value = match rest.find(" #") {
        Some(i) => &rest[..i],
        None => rest,
    }
    .trim();
    let value = value.trim_matches(['"', '\'']);
    (!value.is_empty()).then(|| value.to_string())
}

/// The entries of a top-level section (`Resources`, `Outputs`), found by indentation: each
/// key (unquoted) at the section's first indentation, with the text of its content lines.
fn blocks(template: &str, section: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut inside = false;
    let mut entry_indent = None;
    for line in template.lines() {
        if !is_content(line) {
            continue;
        }
        let indent = indent_of(line);
        if indent == 0 {
            inside = line.trim_end() == format!("{section}:");
            continue;
        }
        if !inside {
            continue;
        }
        if indent <= *entry_indent.get_or_insert(indent) {
            let key = line.trim().trim_end_matches(':').trim_matches(['"', '\'']);
            out.push((key.to_string(), String::new()));
        } else if let Some((_, text)) = out.last_mut() {
            text.push_str(line);
            text.push('\n');
        }
    }
    out
}

/// The `AWS::Serverless::Function` resources of a SAM template: among the `Resources` entries
/// ([`blocks`]), those whose `Type` one level below the key says so, with `CodeUri`,
/// `BuildMethod` and `Binary` found anywhere in the resource (the last one, if repeated).
fn serverless_functions(template: &str) -> Vec<Function> {
    blocks(template, "Resources")
        .into_iter()
        .filter_map(|(logical_id, text)| {
            let child_indent = text.lines().next().map(indent_of)?;
            let kind = text.lines().filter(|l| indent_of(l) == child_indent).find_map(|l| scalar(l, "Type"));
            let last = |key: &str| text.lines().rev().find_map(|l| scalar(l, key));
            (kind.as_deref() == Some("AWS::Serverless::Function")).then(|| Function {
                code_uri: last("CodeUri"),
                build_method: last("BuildMethod"),
                binary: last("Binary"),
                logical_id,
            })
        })
        .collect()
}

/// `name` of the `[package]` table of a Cargo.toml.
fn package_name(manifest: &str) -> Option<String> {
    table_names(manifest, "[package]").into_iter().next()
}

/// The `name = "..."` of every table with this header (`[package]`, `[[bin]]`) in a Cargo.toml.
fn table_names(manifest: &str, header: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut in_table = false;
    for line in manifest.lines() {
        let t = line.split('#').next().unwrap_or("").trim();
        if t.starts_with('[') {
            in_table = t == header;
        } else if in_table {
            if let Some(value) = t.strip_prefix("name").and_then(|rest| rest.trim_start().strip_prefix('=')) {
                names.push(value.trim().trim_matches('"').to_string());
            }
        }
    }
    names
}

/// The quoted entries of `[workspace] members = [...]` (possibly spread over several lines).
fn workspace_members(manifest: &str) -> Vec<String> {
    let Some(start) = manifest.find("members") else {
        return Vec::new();
    };
    let rest = &manifest[start..];
    let (Some(open), Some(close)) = (rest.find('['), rest.find(']')) else {
        return Vec::new();
    };
    rest[open + 1..close]
        .lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .flat_map(|l| l.split(','))
        .map(|s| s.trim().trim_matches('"').to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Whether `path` is one of `members`, literally or through a trailing `/*` glob.
fn is_member(members: &[String], path: &str) -> bool {
    members.iter().any(|m| {
        let m = m.trim_end_matches('/');
        m == path || m.strip_suffix("/*").is_some_and(|dir| path.rsplit_once('/').is_some_and(|(p, _)| p == dir))
    })
}

// ---------------------------------------------------------------------------- tests of the checker

const SAMPLE: &str = r#"
Transform: AWS::Serverless-2016-10-31
Globals:
  Function:
    Runtime: provided.al2023
Resources:
  # comment
  Table:
    Type: AWS::DynamoDB::Table
    Properties:
      BillingMode: PAY_PER_REQUEST
  AlphaFunction:
    Type: AWS::Serverless::Function
    Metadata:
      BuildMethod: rust-cargolambda
      BuildProperties:
        Binary: alpha
    Properties:
      CodeUri: ./functions/alpha/   # trailing comment
      Role: !GetAtt AlphaRole.Arn
      Events:
        Http:
          Type: HttpApi
          Properties:
            Path: /x
  BetaFunction:
    Type: "AWS::Serverless::Function"
    Metadata:
      BuildMethod: rust-cargolambda
      BuildProperties:
        Binary: wrong
    Properties:
      CodeUri: functions/beta
  NoCode:
    Type: AWS::Serverless::Function
    Properties:
      Handler: bootstrap
Outputs:
  CodeUri:
    Value: functions/not-a-function
"#;

#[test]
fn parser_finds_functions_and_their_build_settings() {
    let functions = serverless_functions(SAMPLE);
    let ids: Vec<&str> = functions.iter().map(|f| f.logical_id.as_str()).collect();
    assert_eq!(ids, ["AlphaFunction", "BetaFunction", "NoCode"]);
    assert_eq!(
        functions[0],
        Function {
            logical_id: "AlphaFunction".into(),
            code_uri: Some("./functions/alpha/".into()),
            build_method: Some("rust-cargolambda".into()),
            binary: Some("alpha".into()),
        }
    );
    assert_eq!(functions[1].binary.as_deref(), Some("wrong"));
    assert_eq!(functions[2].code_uri, None);
}

#[test]
fn checker_reports_missing_crates_functions_and_mismatched_names() {
    let root = std::env::temp_dir().join(format!("baton-template-check-{}", std::process::id()));
    let _ = fs::remove_dir_all(&root);
    for (dir, package, bin) in [
        ("alpha", "alpha", "alpha"),
        ("beta", "beta", "beta-bin"),
        ("orphan", "orphan", "orphan"),
        ("gamma", "not-gamma", "gamma"),
    ] {
        fs::create_dir_all(root.join("functions").join(dir)).unwrap();
        fs::write(
            root.join("functions").join(dir).join("Cargo.toml"),
            format!(
                "[package]\nname = \"{package}\" # the package\nversion = \"0.1.0\"\n\n[[bin]]\nname = \"{bin}\"\n\
                 path = \"src/main.rs\"\n\n[dependencies]\nname = \"x\"\n"
            ),
        )
        .unwrap();
    }
    fs::create_dir_all(root.join("functions/no-manifest")).unwrap();
    let template = format!(
        "{SAMPLE}  GammaFunction:\n    Type: AWS::Serverless::Function\n    Metadata:\n      BuildMethod: \
         rust-cargolambda\n      BuildProperties:\n        Binary: gamma\n    Properties:\n      CodeUri: \
         functions/gamma\n  MissingFunction:\n    Type: AWS::Serverless::Function\n    Metadata:\n      \
         BuildMethod: rust-cargolambda\n      BuildProperties:\n        Binary: missing\n    Properties:\n      \
         CodeUri: functions/missing\n"
    )
    .replace("Outputs:\n  CodeUri:\n    Value: functions/not-a-function\n", "");
    let problems = check_function_crates(&root, &template);
    fs::remove_dir_all(&root).unwrap();
    let has = |needle: &str| problems.iter().any(|p| p.contains(needle));
    assert!(!problems.iter().any(|p| p.starts_with("AlphaFunction")), "{problems:#?}");
    assert!(has("BetaFunction: Metadata.BuildProperties.Binary is Some(\"wrong\")"), "{problems:#?}");
    assert!(
        has("BetaFunction: functions/beta/Cargo.toml declares binaries [\"beta-bin\"] but none named \"beta\""),
        "{problems:#?}"
    );
    assert!(has("NoCode: no CodeUri"), "{problems:#?}");
    assert!(has("GammaFunction: functions/gamma/Cargo.toml has package name Some(\"not-gamma\")"), "{problems:#?}");
    assert!(has("MissingFunction: CodeUri functions/missing has no crate"), "{problems:#?}");
    assert!(has("crate functions/orphan has no AWS::Serverless::Function"), "{problems:#?}");
    assert!(!has("no-manifest"), "{problems:#?}");
    assert_eq!(problems.len(), 6, "{problems:#?}");
}

#[test]
fn workspace_members_are_read_with_globs() {
    let manifest = "[workspace]\nresolver = \"2\"\nmembers = [\n    \"shared/core\", # core\n    \"functions/*\",\n]\n";
    let members = workspace_members(manifest);
    assert_eq!(members, ["shared/core", "functions/*"]);
    assert!(is_member(&members, "functions/widget-api"));
    assert!(is_member(&members, "shared/core"));
    assert!(!is_member(&members, "shared/aws"));
    assert!(!is_member(&["functions/widget-api".to_string()], "functions/desk-webhook"));
}

#[test]
fn url_checker_reports_routes_of_other_functions_and_urls_outside_their_condition() {
    let template = r#"
Conditions:
  HasHookUrl: !Equals [!Ref Urls, "yes"]
Resources:
  HookFunction:
    Type: AWS::Serverless::Function
    Properties:
      Events:
        Hook:
          Type: HttpApi
          Properties:
            Path: /hooks/{agent}
  ApiFunction:
    Type: AWS::Serverless::Function
    Properties:
      Events:
        Widget:
          Type: HttpApi
          Properties:
            Path: /api/widget/{agent}/session
  HookUrl:
    Type: AWS::Lambda::Url
    Condition: HasHookUrl
    Properties:
      TargetFunctionArn: !GetAtt HookFunction.Arn
Outputs:
  Good:
    Value: !If
      - HasHookUrl
      - !Sub "${HookUrl.FunctionUrl}hooks/{agent}"
      - !Sub "https://${HttpApi}.execute-api.${AWS::Region}.${AWS::URLSuffix}/hooks/{agent}"
  Family:
    Value: !Sub "https://${HttpApi}.execute-api.${AWS::Region}.${AWS::URLSuffix}/api/widget/{agent}/..."
  OtherFunction:
    Condition: HasHookUrl
    Value: !Sub "${HookUrl.FunctionUrl}api/widget/{agent}/session"
  Unguarded:
    Value: !Sub "${HookUrl.FunctionUrl}hooks/{agent}"
  NoRoute:
    Value: !Sub "https://${HttpApi}.execute-api.${AWS::Region}.${AWS::URLSuffix}/hooks/{agent}/v2"
  NoUrl:
    Value: !Sub "${MissingUrl.FunctionUrl}hooks/{agent}"
"#;
    let problems = check_url_outputs(template);
    assert_eq!(
        problems,
        [
            "OtherFunction: /api/widget/{agent}/session is no route of HookFunction, which HookUrl serves",
            "Unguarded: uses HookUrl outside its condition HasHookUrl",
            "NoRoute: /hooks/{agent}/v2 is no route of the HTTP API",
            "NoUrl: MissingUrl is no function URL of the template",
        ]
    );
}
