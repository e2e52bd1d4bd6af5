//! When a command needs a human's approval, and what each answer means.
//!
//! Modes (per tenant/project, from configuration):
//! - `never`: never ask; every command runs (still inside its sandbox).
//! - `on-request`: ask only when the model itself asks for approval.
//! - `untrusted`: ask for everything except a table of known read-only commands.
//!
//! Answers: `YES` (run once), `NO` (deny and stop the turn), `NO_CONTINUE` (deny, let the
//! model go on), `ALWAYS` (run, and remember for this session), `EXPLAIN` (do not run yet;
//! explain, then ask again).
//!
//! An `ALWAYS` approval is an [`ApprovalKey`]: the exact argv, cwd and session. It is never
//! widened to a binary name, so approving `git status` does not approve `sh -c 'git status'`,
//! `env git status` or `busybox …`; wrappers are also never in the read-only table, since
//! they run whatever follows. This module keeps no state: the gateway owns each session's
//! [`SessionApprovals`] and passes it in.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

/// How eagerly to ask.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ApprovalMode {
    /// Never ask.
    Never,
    /// Ask when the model requests it.
    #[default]
    OnRequest,
    /// Ask unless the command is a known read-only one.
    Untrusted,
}

/// A human's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Decision {
    /// Run this once.
    Yes,
    /// Do not run; stop the turn.
    No,
    /// Do not run; tell the model and let it continue.
    NoContinue,
    /// Run, and run this exact command again in this session without asking.
    Always,
    /// Do not run yet; explain the command, then ask again.
    Explain,
}

/// A command the model wants to run.
#[derive(Clone, Copy, Debug)]
pub struct CommandCall<'a> {
    /// The argv (for `shell_exec`, see [`shell_argv`]).
    pub argv: &'a [String],
    /// Working directory, workspace-relative as the tool received it.
    pub cwd: &'a str,
    /// The agent session.
    pub session: &'a str,
    /// The model flagged this call as needing approval.
    pub model_requested_approval: bool,
}

/// What an `ALWAYS` approval is bound to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ApprovalKey {
    /// Exact argv.
    pub argv: Vec<String>,
    /// Exact cwd.
    pub cwd: String,
    /// The session.
    pub session: String,
}

impl ApprovalKey {
    /// The key of a call.
    pub fn of(call: &CommandCall<'_>) -> Self {
        ApprovalKey { argv: call.argv.to_vec(), cwd: call.cwd.to_owned(), session: call.session.to_owned() }
    }
}

/// Most remembered approvals per session; past this an `ALWAYS` acts as `YES`.
pub const MAX_SESSION_APPROVALS: usize = 1024;

/// The `ALWAYS` approvals of one session (owned by the gateway).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionApprovals(BTreeSet<ApprovalKey>);

impl SessionApprovals {
    /// Whether this exact call was approved with `ALWAYS`.
    pub fn covers(&self, call: &CommandCall<'_>) -> bool {
        self.0.contains(&ApprovalKey::of(call))
    }

    /// Remembers a key; false when the session is at [`MAX_SESSION_APPROVALS`].
    pub fn remember(&mut self, key: ApprovalKey) -> bool {
        if self.0.len() >= MAX_SESSION_APPROVALS && !self.0.contains(&key) {
            return false;
        }
        self.0.insert(key);
        true
    }
}

/// Whether to run now or ask.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gate {
    /// Run without asking.
    Run,
    /// Ask a human first.
    Ask,
}

/// Decides whether a call needs approval.
pub fn gate(mode: ApprovalMode, call: &CommandCall<'_>, approvals: &SessionApprovals) -> Gate {
    if approvals.covers(call) {
        return Gate::Run;
    }
    let ask = match mode {
        ApprovalMode::Never => false,
        ApprovalMode::OnRequest => call.model_requested_approval,
        ApprovalMode::Untrusted => call.model_requested_approval || !is_known_read_only(call.argv),
    };
    if ask { Gate::Ask } else { Gate::Run }
}

/// What to do with an answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// Run the call.
    Run,
    /// Run it and remember the key for the session.
    RunAndRemember(ApprovalKey),
    /// Do not run. `stop_turn`: end the agent turn (`NO`) or let the model continue
    /// (`NO_CONTINUE`).
    Deny {
        /// Whether the turn ends.
        stop_turn: bool,
    },
    /// Do not run; explain and ask again.
    Explain,
}

/// Maps an answer to what happens.
pub fn resolve(decision: Decision, call: &CommandCall<'_>) -> Resolution {
    match decision {
        Decision::Yes => Resolution::Run,
        Decision::Always => Resolution::RunAndRemember(ApprovalKey::of(call)),
        Decision::No => Resolution::Deny { stop_turn: true },
        Decision::NoContinue => Resolution::Deny { stop_turn: false },
        Decision::Explain => Resolution::Explain,
    }
}

/// Characters that make a shell line more than one simple command (or expand something).
const SHELL_SYNTAX: &[char] =
    &[';', '&', '|', '<', '>', '$', '`', '(', ')', '{', '}', '*', '?', '[', ']', '~', '!', '#', '\n', '\r', '\\', '='];

/// The argv of a `shell_exec` command line when it is one simple command without any shell
/// syntax (pipes, redirections, expansions, globs, assignments); otherwise
/// `["bash", "-lc", line]`, which is only ever matched exactly and is never read-only.
pub fn shell_argv(line: &str) -> Vec<String> {
    let simple = !line.contains(SHELL_SYNTAX);
    match shlex::split(line) {
        Some(words) if simple && !words.is_empty() => words,
        _ => vec!["bash".into(), "-lc".into(), line.into()],
    }
}

/// Whether `argv` is a known read-only command: a bare program name (no path, so a binary of
/// the workspace cannot pose as one) from the table below with no argument that writes or
/// executes. Wrappers (`sh`, `env`, `busybox`, `xargs`, `sudo`, …) are never in the table.
pub fn is_known_read_only(argv: &[String]) -> bool {
    let Some((program, args)) = argv.split_first() else {
        return false;
    };
    if program.contains('/') {
        return false;
    }
    let any = |bad: &dyn Fn(&str) -> bool| args.iter().any(|a| bad(a));
    match program.as_str() {
        "ls" | "cat" | "head" | "tail" | "wc" | "pwd" | "echo" | "true" | "false" | "stat" | "which" | "whoami"
        | "id" | "uname" | "du" | "df" | "nl" | "cut" | "tr" | "basename" | "dirname" | "realpath" | "file"
        | "diff" | "cmp" | "grep" | "egrep" | "fgrep" => true,
        // -o FILE writes the result; --compress-program runs a program.
        "sort" => !any(&|a| a.starts_with("-o") || a.starts_with("--output") || a.starts_with("--compress")),
        "tree" => !any(&|a| a.starts_with("-o")),
        "rg" => !any(&|a| a.starts_with("--pre") || a == "-z" || a.starts_with("--search-zip")),
        "find" => !any(&|a| {
            matches!(
                a,
                "-exec" | "-execdir" | "-ok" | "-okdir" | "-delete" | "-fls" | "-fprint" | "-fprint0" | "-fprintf"
            )
        }),
        // Only `sed -n <N>p` / `sed -n <N>,<M>p` FILE…: no in-place edit, no `e`/`w` command.
        "sed" => {
            args.len() >= 2 && args[0] == "-n" && is_line_print(&args[1]) && !any(&|a| a.starts_with('-') && a != "-n")
        }
        "git" => is_read_only_git(args),
        _ => false,
    }
}

fn is_line_print(script: &str) -> bool {
    let Some(range) = script.strip_suffix('p') else {
        return false;
    };
    let mut parts = range.splitn(2, ',');
    parts.all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

fn is_read_only_git(args: &[String]) -> bool {
    let Some((sub, rest)) = args.split_first() else {
        return false;
    };
    // A global option (-c, -C, --git-dir, --exec-path …) before the subcommand can run code.
    if !matches!(sub.as_str(), "status" | "log" | "diff" | "show" | "branch" | "rev-parse" | "ls-files") {
        return false;
    }
    let writes_or_runs = |a: &String| {
        a.starts_with("--output")
            || a.starts_with("--ext-diff")
            || a.starts_with("--textconv")
            || a.starts_with("--exec")
    };
    if rest.iter().any(writes_or_runs) {
        return false;
    }
    // `git branch NAME` creates a branch; only listing forms are read-only.
    sub != "branch"
        || rest.iter().all(|a| matches!(a.as_str(), "-a" | "-r" | "-v" | "-vv" | "--list" | "--show-current"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        shlex::split(s).unwrap()
    }

    fn call<'a>(argv: &'a [String], cwd: &'a str, session: &'a str, requested: bool) -> CommandCall<'a> {
        CommandCall { argv, cwd, session, model_requested_approval: requested }
    }

    #[test]
    fn modes_decide_when_to_ask() {
        let none = SessionApprovals::default();
        let ls = argv("ls -la");
        let rm = argv("rm -rf build");
        // (mode, argv, model requested approval, expected)
        let table: [(ApprovalMode, &[String], bool, Gate); 12] = [
            (ApprovalMode::Never, &ls, false, Gate::Run),
            (ApprovalMode::Never, &rm, false, Gate::Run),
            (ApprovalMode::Never, &rm, true, Gate::Run),
            (ApprovalMode::Never, &ls, true, Gate::Run),
            (ApprovalMode::OnRequest, &ls, false, Gate::Run),
            (ApprovalMode::OnRequest, &rm, false, Gate::Run),
            (ApprovalMode::OnRequest, &rm, true, Gate::Ask),
            (ApprovalMode::OnRequest, &ls, true, Gate::Ask),
            (ApprovalMode::Untrusted, &ls, false, Gate::Run),
            (ApprovalMode::Untrusted, &rm, false, Gate::Ask),
            (ApprovalMode::Untrusted, &rm, true, Gate::Ask),
            (ApprovalMode::Untrusted, &ls, true, Gate::Ask),
        ];
        for (mode, a, requested, want) in table {
            assert_eq!(gate(mode, &call(a, ".", "s1", requested), &none), want, "{mode:?} {a:?} {requested}");
        }
    }

    #[test]
    fn decisions_map_to_outcomes() {
        let a = argv("make test");
        let c = call(&a, "src", "s1", true);
        let key = ApprovalKey { argv: a.clone(), cwd: "src".into(), session: "s1".into() };
        let table = [
            (Decision::Yes, Resolution::Run),
            (Decision::No, Resolution::Deny { stop_turn: true }),
            (Decision::NoContinue, Resolution::Deny { stop_turn: false }),
            (Decision::Always, Resolution::RunAndRemember(key)),
            (Decision::Explain, Resolution::Explain),
        ];
        for (decision, want) in table {
            assert_eq!(resolve(decision, &c), want, "{decision:?}");
        }
        let names: Vec<Decision> = serde_json::from_str(r#"["YES","NO","NO_CONTINUE","ALWAYS","EXPLAIN"]"#).unwrap();
        assert_eq!(names.len(), 5);
        let modes: Vec<ApprovalMode> = serde_json::from_str(r#"["never","on-request","untrusted"]"#).unwrap();
        assert_eq!(modes, [ApprovalMode::Never, ApprovalMode::OnRequest, ApprovalMode::Untrusted]);
    }

    #[test]
    fn always_binds_to_exact_argv_cwd_and_session_and_wrappers_do_not_inherit() {
        let approved = argv("git push origin main");
        let mut approvals = SessionApprovals::default();
        let Resolution::RunAndRemember(key) = resolve(Decision::Always, &call(&approved, ".", "s1", true)) else {
            panic!("ALWAYS must remember")
        };
        assert!(approvals.remember(key));
        let other_cwd = call(&approved, "sub", "s1", true);
        let other_session = call(&approved, ".", "s2", true);
        let variants = [
            "git push origin main",
            "git push origin main --force",
            "git push",
            "sh -c 'git push origin main'",
            "bash -lc 'git push origin main'",
            "env git push origin main",
            "env FOO=1 git push origin main",
            "busybox git push origin main",
            "/usr/bin/git push origin main",
            "xargs git push origin main",
        ];
        let expected_run = [true, false, false, false, false, false, false, false, false, false];
        for (line, want) in variants.iter().zip(expected_run) {
            let a = argv(line);
            let got = gate(ApprovalMode::Untrusted, &call(&a, ".", "s1", true), &approvals) == Gate::Run;
            assert_eq!(got, want, "{line}");
        }
        assert_eq!(gate(ApprovalMode::Untrusted, &other_cwd, &approvals), Gate::Ask);
        assert_eq!(gate(ApprovalMode::Untrusted, &other_session, &approvals), Gate::Ask);
    }

    #[test]
    fn remembered_approvals_are_bounded() {
        let mut approvals = SessionApprovals::default();
        for i in 0..MAX_SESSION_APPROVALS {
            assert!(approvals.remember(ApprovalKey {
                argv: vec![i.to_string()],
                cwd: ".".into(),
                session: "s".into()
            }));
        }
        let extra = ApprovalKey { argv: vec!["x".into()], cwd: ".".into(), session: "s".into() };
        assert!(!approvals.remember(extra));
        assert!(approvals.remember(ApprovalKey { argv: vec!["0".into()], cwd: ".".into(), session: "s".into() }));
    }

    #[test]
    fn read_only_table() {
        let table: &[(&str, bool)] = &[
            ("ls -la src", true),
            ("cat README.md", true),
            ("head -n 20 a.rs", true),
            ("wc -l a b", true),
            ("grep -rn foo .", true),
            ("rg -n foo", true),
            ("rg --pre ./evil foo", false),
            ("rg -z foo", false),
            ("find . -name '*.rs'", true),
            ("find . -exec rm {} ;", false),
            ("find . -delete", false),
            ("find . -fprint out", false),
            ("sort a.txt", true),
            ("sort -o a.txt a.txt", false),
            ("sort --compress-program=sh a", false),
            ("sed -n 1,20p a.rs", true),
            ("sed -n 5p a.rs", true),
            ("sed -i s/a/b/ a.rs", false),
            ("sed -n 1e a.rs", false),
            ("sed -n 1w/etc/x a.rs", false),
            ("sed -n 1p -i a.rs", false),
            ("tree -o out.txt", false),
            ("git status", true),
            ("git log --oneline -5", true),
            ("git diff HEAD~1", true),
            ("git diff --ext-diff", false),
            ("git log --output=/tmp/x", false),
            ("git -c core.pager=sh log", false),
            ("git -C /etc status", false),
            ("git branch", true),
            ("git branch -a", true),
            ("git branch evil", false),
            ("git push", false),
            ("git", false),
            ("rm -rf /", false),
            ("sh -c ls", false),
            ("bash -c ls", false),
            ("env ls", false),
            ("busybox ls", false),
            ("xargs ls", false),
            ("sudo ls", false),
            ("nohup ls", false),
            ("timeout 5 ls", false),
            ("./ls", false),
            ("/bin/ls", false),
            ("python3 -c 'print(1)'", false),
            ("", false),
        ];
        for (line, want) in table {
            let a = shlex::split(line).unwrap();
            assert_eq!(is_known_read_only(&a), *want, "{line:?}");
        }
    }

    #[test]
    fn shell_lines_split_only_when_they_are_one_simple_command() {
        let table: &[(&str, &[&str])] = &[
            ("ls -la", &["ls", "-la"]),
            ("cat 'a b.txt'", &["cat", "a b.txt"]),
            ("ls; rm -rf /", &["bash", "-lc", "ls; rm -rf /"]),
            ("ls && rm x", &["bash", "-lc", "ls && rm x"]),
            ("cat a | sh", &["bash", "-lc", "cat a | sh"]),
            ("ls > out", &["bash", "-lc", "ls > out"]),
            ("echo $(id)", &["bash", "-lc", "echo $(id)"]),
            ("echo `id`", &["bash", "-lc", "echo `id`"]),
            ("cat *", &["bash", "-lc", "cat *"]),
            ("FOO=1 ls", &["bash", "-lc", "FOO=1 ls"]),
            ("ls\nrm x", &["bash", "-lc", "ls\nrm x"]),
            ("cat 'unterminated", &["bash", "-lc", "cat 'unterminated"]),
            ("", &["bash", "-lc", ""]),
        ];
        for (line, want) in table {
            assert_eq!(shell_argv(line), *want, "{line:?}");
        }
        assert!(!is_known_read_only(&shell_argv("ls; rm -rf /")));
        assert!(is_known_read_only(&shell_argv("git status")));
    }
}
