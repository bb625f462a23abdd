//! Tidy: rules of the source tree that no compiler checks, read from the
//! tree itself and run by `cargo test` (rust-analyzer's habit). It lives in
//! the testkit, the crate of test infrastructure, because it needs no new
//! dependency there (`serde_json` reads `cargo metadata`) and belongs to no
//! product crate.
//!
//! - **Module docs.** Every `.rs` file of every workspace crate — `src/`,
//!   `tests/`, `benches/`, `build.rs` — starts with a `//!` line: tests and
//!   benches are modules too, and say what they check or measure.
//! - **Crate graph** (ARCHITECTURE.md, "Architecture invariants"), on
//!   direct dependencies as `cargo metadata` lists them:
//!   - `prism-plugin-api` depends on no Prism crate but `prism-proto`;
//!   - every other plugin (`plugins/*`) depends on no Prism crate but
//!     `prism-plugin-api` and `prism-proto`, dev-dependencies included,
//!     except that its tests may use `prism-testkit` for real servers
//!     ("plugins' *tests* use `testkit`": a dev-dependency cycle only).
//!     A test that needs the gateway itself, or one of its features,
//!     is the gateway's;
//!   - the control plane depends on no plugin and not on the gateway, of
//!     any kind (its tests reach servers through `prism-testkit`);
//!   - the client is a pure gRPC client: no gateway, control-plane or
//!     plugin crate among its dependencies (its tests start servers);
//!   - `prism-auth`, `prism-tls` and `prism-telemetry` know no other Prism
//!     crate.
//! - **Module graph.** The gateway's modules (one per `.rs` file of
//!   `gateway/src`) import each other in no cycle (ARCHITECTURE.md,
//!   `gateway/`): a module that needs a type of one that needs it back is
//!   a layer split wrongly. An edge is any `crate::`, `super::` or
//!   `self::` path, or a path through a child module the file declares,
//!   outside comments and the file's trailing `#[cfg(test)] mod tests`
//!   (tests may reach anything), resolved to the deepest module it names.
//! - **Paths.** Every repository path ARCHITECTURE.md names in backticks
//!   (a name with a file extension, or ending in `/`) exists. A relative
//!   name (`store/file.rs`) is found at the root, in the crate whose
//!   section names it (`control-plane/` or `control-plane/src/`), or under
//!   some crate's `src/`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// The workspace as `cargo metadata --no-deps` describes it.
struct Workspace {
    root: PathBuf,
    crates: Vec<Crate>,
}

struct Crate {
    name: String,
    /// The crate's directory, relative to the workspace root (`plugins/kafka`).
    dir: PathBuf,
    /// (dependency, kind: "normal", "dev" or "build")
    deps: Vec<(String, String)>,
}

fn workspace() -> Workspace {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo metadata");
    assert!(out.status.success(), "cargo metadata failed: {}", String::from_utf8_lossy(&out.stderr));
    let meta: Value = serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON");
    let root = PathBuf::from(meta["workspace_root"].as_str().expect("workspace_root"));
    let crates = meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|p| {
            let manifest = Path::new(p["manifest_path"].as_str().expect("manifest_path"));
            let dir = manifest.parent().expect("a manifest is in a directory");
            Crate {
                name: p["name"].as_str().expect("name").to_owned(),
                dir: dir.strip_prefix(&root).expect("members are under the root").to_owned(),
                deps: p["dependencies"]
                    .as_array()
                    .expect("dependencies")
                    .iter()
                    .map(|d| {
                        let name = d["name"].as_str().expect("dependency name").to_owned();
                        (name, d["kind"].as_str().unwrap_or("normal").to_owned())
                    })
                    .collect(),
            }
        })
        .collect();
    Workspace { root, crates }
}

/// Every `.rs` file under `dir`, skipping build output and hidden directories.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if path.is_dir() {
            if name != "target" && !name.starts_with('.') {
                rust_files(&path, out);
            }
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_module_starts_with_a_doc_line() {
    let ws = workspace();
    let mut files = Vec::new();
    for krate in &ws.crates {
        rust_files(&ws.root.join(&krate.dir), &mut files);
    }
    assert!(files.len() > 100, "found only {} .rs files: is the walk broken?", files.len());
    let offenders: Vec<String> = files
        .iter()
        .filter(|f| {
            let text = std::fs::read_to_string(f).unwrap_or_else(|e| panic!("read {}: {e}", f.display()));
            !text.lines().find(|l| !l.trim().is_empty()).is_some_and(|l| l.starts_with("//!"))
        })
        .map(|f| f.strip_prefix(&ws.root).unwrap_or(f).display().to_string())
        .collect();
    assert!(
        offenders.is_empty(),
        "every module starts with a `//!` line saying what it is (STYLE.md); these do not:\n  {}",
        offenders.join("\n  ")
    );
}

const PROTO: &str = "prism-proto";
const PLUGIN_API: &str = "prism-plugin-api";
const TESTKIT: &str = "prism-testkit";
const GATEWAY: &str = "prism-gateway";
const CONTROL_PLANE: &str = "prism-control-plane";

fn is_prism(name: &str) -> bool {
    name.starts_with("prism-")
}

fn is_plugin(ws: &Workspace, name: &str) -> bool {
    ws.crates.iter().any(|c| c.name == name && c.dir.starts_with("plugins"))
}

#[test]
fn the_crate_graph_keeps_the_architecture_invariants() {
    let ws = workspace();
    let mut broken = Vec::new();
    let mut checked = BTreeSet::new();
    for krate in &ws.crates {
        for (dep, kind) in &krate.deps {
            let dev = kind == "dev";
            let rule = if krate.name == PLUGIN_API {
                (is_prism(dep) && dep != PROTO)
                    .then_some("the plugin API depends on no Prism crate but prism-proto (proto ← plugins/api)")
            } else if krate.dir.starts_with("plugins") {
                (is_prism(dep) && dep != PLUGIN_API && dep != PROTO && !(dev && dep == TESTKIT)).then_some(
                    "a plugin knows only prism-plugin-api and prism-proto, dev-dependencies included \
                     (its tests may use prism-testkit); a test that needs the gateway itself belongs in gateway/tests",
                )
            } else if krate.name == CONTROL_PLANE {
                (is_plugin(&ws, dep) || dep == GATEWAY).then_some(
                    "the control plane depends on no plugin and not on the gateway: it holds no backend code",
                )
            } else if krate.name == "prism-client" {
                (!dev && (is_plugin(&ws, dep) || dep == GATEWAY || dep == CONTROL_PLANE))
                    .then_some("the client is a pure gRPC client: no gateway, control-plane or plugin crate")
            } else if krate.name == "prism-schema" {
                (is_prism(dep) && dep != PROTO).then_some(
                    "the schema rules know no Prism crate but prism-proto: both sides of the watch share them",
                )
            } else if ["prism-auth", "prism-tls", "prism-telemetry"].contains(&krate.name.as_str()) {
                (!dev && is_prism(dep)).then_some("auth, tls and telemetry know no other Prism crate")
            } else {
                None
            };
            checked.insert(krate.name.as_str());
            if let Some(rule) = rule {
                broken.push(format!(
                    "{} ({}) has the {kind} dependency {dep}: {rule}",
                    krate.name,
                    krate.dir.display()
                ));
            }
        }
    }
    for name in [PLUGIN_API, "prism-plugin-kafka", CONTROL_PLANE, "prism-client", "prism-auth", "prism-schema"] {
        assert!(checked.contains(name), "{name} is not in `cargo metadata`: the rules above name a crate that moved");
    }
    assert!(broken.is_empty(), "ARCHITECTURE.md's dependency rules are broken:\n  {}", broken.join("\n  "));
}

/// Names ARCHITECTURE.md writes as paths that are not in this repository.
const OUTSIDE_THE_REPOSITORY: &[&str] = &["SPEC.md"]; // shared with the project, not versioned here

/// A backticked name that is meant as a repository path: path characters
/// only, not absolute (`/metrics` is a URL path), and a file extension or a
/// trailing `/` (`tenant/name` and `prism-proto/grpc` are not paths).
fn is_path(name: &str) -> bool {
    let chars = name.chars().all(|c| c.is_ascii_alphanumeric() || "_.-/".contains(c));
    let ext = [".rs", ".md", ".toml", ".sh", ".proto", ".yml", ".yaml", ".json"].iter().any(|e| name.ends_with(e));
    chars && !name.starts_with('/') && (ext || name.ends_with('/'))
}

#[test]
fn every_path_architecture_md_names_exists() {
    let ws = workspace();
    let doc = std::fs::read_to_string(ws.root.join("ARCHITECTURE.md")).expect("read ARCHITECTURE.md");
    // The crate directory of the `### `dir/`` section being read.
    let mut section: Option<PathBuf> = None;
    let mut named = 0;
    let mut missing = Vec::new();
    for (n, line) in doc.lines().enumerate() {
        if line.starts_with('#') {
            section = line
                .split('`')
                .nth(1)
                .filter(|first| line.starts_with("### ") && first.ends_with('/'))
                .map(|dir| PathBuf::from(dir.trim_end_matches('/')));
        }
        for name in line.split('`').skip(1).step_by(2).filter(|n| is_path(n)) {
            if OUTSIDE_THE_REPOSITORY.contains(&name) {
                continue;
            }
            named += 1;
            let mut candidates = vec![ws.root.join(name)];
            if let Some(dir) = &section {
                candidates.push(ws.root.join(dir).join(name));
                candidates.push(ws.root.join(dir).join("src").join(name));
            }
            candidates.extend(ws.crates.iter().map(|c| ws.root.join(&c.dir).join("src").join(name)));
            if !candidates.iter().any(|c| c.exists()) {
                let at = section.as_ref().map(|d| format!(" (section `{}/`)", d.display())).unwrap_or_default();
                missing.push(format!("ARCHITECTURE.md:{} names `{name}`{at}, which does not exist", n + 1));
            }
        }
    }
    assert!(named > 50, "found only {named} paths in ARCHITECTURE.md: is the parser broken?");
    assert!(
        missing.is_empty(),
        "every path ARCHITECTURE.md names must exist (fix the name, or the map):\n  {}",
        missing.join("\n  ")
    );
}

/// A module of a crate, as its path from the crate root (`["layers", "quota"]`).
type Module = Vec<String>;

/// The module `file` is, under the crate's `src`: `quota/mod.rs` is
/// `quota`, `layers/quota.rs` is `layers::quota`, `lib.rs` the root.
fn module_of(src: &Path, file: &Path) -> Module {
    let rel = file.strip_prefix(src).expect("a file under src").with_extension("");
    let mut module: Module = rel.iter().map(|c| c.to_string_lossy().into_owned()).collect();
    if module.last().is_some_and(|last| last == "mod" || last == "lib" || last == "main") {
        module.pop();
    }
    module
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Reads the use tree at `code[*at..]` (`a::b`, `a::{b, c::d as e}`,
/// `a::*`), adding every path it names to `out`, each after `prefix`.
fn use_tree(code: &[u8], at: &mut usize, prefix: &[String], out: &mut Vec<Module>) {
    let skip_space = |at: &mut usize| {
        while code.get(*at).is_some_and(u8::is_ascii_whitespace) {
            *at += 1;
        }
    };
    let ident = |at: &mut usize| {
        let start = *at;
        while code.get(*at).copied().is_some_and(is_ident) {
            *at += 1;
        }
        String::from_utf8_lossy(&code[start..*at]).into_owned()
    };
    let mut path = prefix.to_vec();
    loop {
        skip_space(at);
        if code.get(*at) == Some(&b'{') {
            *at += 1;
            loop {
                use_tree(code, at, &path, out);
                skip_space(at);
                if code.get(*at) == Some(&b',') {
                    *at += 1;
                    skip_space(at);
                }
                match code.get(*at) {
                    Some(b'}') => {
                        *at += 1;
                        return;
                    }
                    Some(_) => continue,
                    None => return,
                }
            }
        }
        if code.get(*at) == Some(&b'*') {
            *at += 1;
            out.push(path);
            return;
        }
        let name = ident(at);
        if name.is_empty() {
            // Not a path after all (`crate::` in a string): skip a byte.
            *at += 1;
            return;
        }
        if name != "self" {
            path.push(name);
        }
        if code[*at..].starts_with(b"::") {
            *at += 2;
            continue;
        }
        // `a as b`: the rename names nothing more.
        let mut after = *at;
        skip_space(&mut after);
        if code[after..].starts_with(b"as") && code.get(after + 2).is_some_and(u8::is_ascii_whitespace) {
            after += 2;
            skip_space(&mut after);
            ident(&mut after);
            *at = after;
        }
        out.push(path);
        return;
    }
}

/// The paths `code` (of module `module`, declaring child modules
/// `children`) names inside its crate, resolved from the crate root.
fn crate_paths(module: &Module, children: &BTreeSet<String>, code: &str) -> Vec<Module> {
    let bytes = code.as_bytes();
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        // Inside a multi-byte character (non-ASCII text in a string or a
        // comment): no path starts here.
        if !code.is_char_boundary(at) {
            at += 1;
            continue;
        }
        let boundary = at == 0 || !(is_ident(bytes[at - 1]) || bytes[at - 1] == b':');
        let word_end = bytes[at..].iter().position(|b| !is_ident(*b)).map_or(bytes.len(), |n| at + n);
        let word = &code[at..word_end];
        if !boundary || word.is_empty() || !bytes[word_end..].starts_with(b"::") {
            at = word_end.max(at + 1);
            continue;
        }
        let base: Option<Module> = match word {
            "crate" => Some(Vec::new()),
            "self" | "super" => Some(module.clone()),
            child if children.contains(child) => Some(module.clone()),
            _ => None,
        };
        let Some(base) = base else {
            at = word_end;
            continue;
        };
        let mut found = Vec::new();
        let mut cursor = if word == "crate" || word == "self" { word_end + 2 } else { at };
        use_tree(bytes, &mut cursor, &[], &mut found);
        for path in found {
            let mut resolved = base.clone();
            let mut rest = path.into_iter().peekable();
            while rest.peek().is_some_and(|s| s == "super") {
                rest.next();
                resolved.pop();
            }
            resolved.extend(rest);
            out.push(resolved);
        }
        at = cursor.max(word_end);
    }
    out
}

/// The code of a module file that counts for its imports: no comment
/// lines, nothing from its `#[cfg(test)] mod tests` on.
fn import_code(text: &str) -> String {
    let end = text.find("#[cfg(test)]\nmod tests").unwrap_or(text.len());
    text[..end].lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n")
}

/// The cycles of a module graph (its strongly connected components of
/// more than one module), each sorted.
fn cycles(graph: &BTreeMap<Module, BTreeSet<Module>>) -> Vec<Vec<Module>> {
    // Kosaraju: finish order on the graph, then components on its reverse.
    fn finish(
        v: &Module,
        g: &BTreeMap<Module, BTreeSet<Module>>,
        seen: &mut BTreeSet<Module>,
        order: &mut Vec<Module>,
    ) {
        if !seen.insert(v.clone()) {
            return;
        }
        for w in g.get(v).into_iter().flatten() {
            finish(w, g, seen, order);
        }
        order.push(v.clone());
    }
    let mut seen = BTreeSet::new();
    let mut order = Vec::new();
    for v in graph.keys() {
        finish(v, graph, &mut seen, &mut order);
    }
    let mut reverse: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for (v, ws) in graph {
        for w in ws {
            reverse.entry(w.clone()).or_default().insert(v.clone());
        }
    }
    let mut assigned = BTreeSet::new();
    let mut found = Vec::new();
    for v in order.iter().rev() {
        let mut component = Vec::new();
        finish(v, &reverse, &mut assigned, &mut component);
        if component.len() > 1 {
            component.sort();
            found.push(component);
        }
    }
    found
}

#[test]
fn the_gateway_modules_import_each_other_in_no_cycle() {
    let ws = workspace();
    let gateway = ws.crates.iter().find(|c| c.name == GATEWAY).expect("the gateway is in `cargo metadata`");
    let src = ws.root.join(&gateway.dir).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeMap<Module, PathBuf> = files
        .into_iter()
        .map(|f| (module_of(&src, &f), f))
        .filter(|(m, _)| m.last().is_none_or(|last| last != "tests"))
        .collect();
    let mut graph: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    let mut edges = 0;
    for (module, file) in &modules {
        let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
        let code = import_code(&text);
        let children: BTreeSet<String> = code
            .lines()
            .filter_map(|l| l.trim().trim_start_matches("pub ").strip_prefix("mod ")?.strip_suffix(';'))
            .map(str::to_owned)
            .collect();
        let targets = graph.entry(module.clone()).or_default();
        for path in crate_paths(module, &children, &code) {
            // The deepest module the path names; the root is no layer.
            let target = (1..=path.len()).rev().map(|n| path[..n].to_vec()).find(|m| modules.contains_key(m));
            if let Some(target) = target.filter(|t| t != module) {
                edges += usize::from(targets.insert(target));
            }
        }
    }
    assert!(
        modules.len() > 30 && edges > 100,
        "found {} modules, {edges} imports: is the parser broken?",
        modules.len()
    );
    let name = |m: &Module| if m.is_empty() { "crate".to_owned() } else { m.join("::") };
    let found: Vec<String> = cycles(&graph)
        .iter()
        .map(|cycle| {
            let members: BTreeSet<&Module> = cycle.iter().collect();
            cycle
                .iter()
                .map(|m| {
                    let into: Vec<String> = graph[m].iter().filter(|t| members.contains(t)).map(&name).collect();
                    format!("{} → {}", name(m), into.join(", "))
                })
                .collect::<Vec<_>>()
                .join("; ")
        })
        .collect();
    assert!(
        found.is_empty(),
        "the gateway's modules import each other in a circle (ARCHITECTURE.md, `gateway/`): move the \
         shared type below both, or pass what the lower module needs:\n  {}",
        found.join("\n  ")
    );
}
