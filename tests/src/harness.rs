//! The lab tests' harness. Every file under `tests/tests/` is a `harness = false` test target
//! whose `main` is [`lab_tests!`]: the same command line as Rust's own test harness (filters,
//! `--exact`, `--ignored`, `--include-ignored`, `--test-threads`, `--list`; from
//! `libtest-mimic`), the same `test result:` lines, and one difference that is the reason for
//! it: a lab test this machine cannot run (not root, no network namespaces, a tool missing)
//! is reported as **ignored**, with the reason, never as passed. Under CI (`CI=true`), or
//! when asked for explicitly with `--ignored`/`--include-ignored`, it runs and fails with
//! the reason instead.

use libtest_mimic::{Arguments, Failed, Trial};

/// What a lab test needs of the machine.
#[derive(Clone, Copy, Debug)]
pub enum Need {
    /// Root and network namespaces (see [`crate::preflight`]).
    Lab,
    /// These programs on `PATH`.
    Tools(&'static [&'static str]),
}

impl Need {
    /// Why this machine does not have it, or `None` when it does.
    fn missing(&self) -> Option<String> {
        match self {
            Need::Lab => crate::preflight().err(),
            Need::Tools(tools) => {
                let missing: Vec<&str> = tools
                    .iter()
                    .copied()
                    .filter(|t| {
                        !std::env::var_os("PATH")
                            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(t).is_file()))
                    })
                    .collect();
                (!missing.is_empty()).then(|| {
                    format!(
                        "{} not installed (scripts/install-deps --image)",
                        missing.join(", ")
                    )
                })
            }
        }
    }
}

/// One test of a file: its name, its function, and whether it only runs when asked for by
/// name (a helper another test starts in a child process).
pub struct LabTest {
    pub name: &'static str,
    pub run: fn(),
    pub only_on_request: bool,
}

/// Runs a file's tests as the test harness would; what `main` of each `tests/tests/*.rs` is.
pub fn run(needs: &[Need], tests: Vec<LabTest>) -> ! {
    let args = Arguments::from_args();
    let missing: Option<String> = needs.iter().find_map(Need::missing);
    let asked = args.ignored || args.include_ignored;
    let run_anyway = crate::under_ci() || asked;
    if let (Some(why), false) = (&missing, run_anyway) {
        eprintln!("lab tests ignored on this machine: {why} (CI=true or --include-ignored runs them, and they fail)");
    }
    let trials = tests
        .into_iter()
        .map(|t| {
            let why = missing.clone();
            let ignored = t.only_on_request || (why.is_some() && !run_anyway);
            let run = t.run;
            Trial::test(t.name, move || match why {
                Some(why) if !t.only_on_request => Err(Failed::from(format!(
                    "this lab test cannot run here: {why}"
                ))),
                _ => {
                    run();
                    Ok(())
                }
            })
            .with_ignored_flag(ignored)
        })
        .collect();
    libtest_mimic::run(&args, trials).exit()
}

/// `main` for a file of lab tests: `lab_tests! { needs: [Need::Lab]; tests: [a, b, c] }`,
/// optionally followed by `; on_request: [helper]` for tests that only run when named.
#[macro_export]
macro_rules! lab_tests {
    (needs: [$($need:expr),* $(,)?]; tests: [$($name:ident),* $(,)?] $(; on_request: [$($helper:ident),* $(,)?])? $(;)?) => {
        fn main() {
            #[allow(unused_imports)]
            use $crate::harness::Need;
            let mut tests = vec![$($crate::harness::LabTest {
                name: stringify!($name),
                run: $name,
                only_on_request: false,
            }),*];
            $($(tests.push($crate::harness::LabTest {
                name: stringify!($helper),
                run: $helper,
                only_on_request: true,
            });)*)?
            $crate::harness::run(&[$($need),*], tests)
        }
    };
}
