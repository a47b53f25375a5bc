//! Reading callgrind's output: the total, each function's exclusive and inclusive cost, the
//! calls between functions, and the crate each function belongs to.
//!
//! The format (valgrind's "Callgrind Format Specification"): a header (`events: Ir`,
//! `positions: line`, and `summary:` or, at the end, `totals:` with the whole dump's cost), then
//! blocks. `fn=NAME` opens the costs of a function; a cost line (`POSITION... COST...`,
//! positions possibly relative as `+3`, `-2` or `*`) adds to its exclusive cost; `cfn=NAME` names a
//! callee and `calls=COUNT TARGET` says how often it was called, and the cost line after `calls=`
//! is the cost of those calls, inclusive of the callee, charged to the call and not to the
//! caller's own. Names are compressed: the first use of a function is `(ID) name`, later ones
//! `(ID)` alone; `fn=` and `cfn=` share the ids. Only the first event is read (callgrind's
//! default collects `Ir`, instructions executed, alone).
//!
//! A function's inclusive cost here is its exclusive cost and the cost of its calls to other
//! functions (a direct recursion is not counted twice), as `callgrind_annotate --inclusive=yes`
//! sums it.

use std::collections::{BTreeMap, HashMap};

/// The allocator's entry points that allocate: mimalloc's, which the binary's
/// `#[global_allocator]` calls (`alloc`, `alloc_zeroed`, `realloc`), and glibc's.
pub(crate) const ALLOCATING: [&str; 11] = [
    "mi_malloc_aligned",
    "mi_zalloc_aligned",
    "mi_realloc_aligned",
    "mi_malloc",
    "mi_zalloc",
    "mi_calloc",
    "mi_realloc",
    "malloc",
    "calloc",
    "realloc",
    "aligned_alloc",
];

/// The allocator's entry points that free.
pub(crate) const FREEING: [&str; 2] = ["mi_free", "free"];

/// Crates whose functions are the scaffolding a call runs in (threads, closures, the runtime's
/// scheduler and task polls, generic wrappers): their inclusive cost is everything's, so the top
/// functions by inclusive cost leave them out.
pub(crate) const FRAME_CRATES: [&str; 5] = ["std", "core", "alloc", "tokio", "libc"];

/// One function's cost in a dump.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct FunctionCost {
    /// Its own instructions, not those of what it called.
    pub(crate) exclusive: u64,
    /// Its own and those of what it called.
    pub(crate) inclusive: u64,
}

/// A parsed callgrind dump.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Profile {
    /// Instructions in all (the `totals:` or `summary:` line).
    pub(crate) total: u64,
    /// Each function's cost, by name.
    pub(crate) functions: HashMap<String, FunctionCost>,
    /// Calls into each of [`ALLOCATING`] and [`FREEING`] from outside the allocator (an entry
    /// point that calls another, `mi_malloc_aligned` into `mi_malloc` say, is one allocation).
    pub(crate) allocator_calls: BTreeMap<String, u64>,
}

/// Why a dump could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ParseError {
    /// A line is not what the format allows there.
    #[error("line {line}: {reason}")]
    Line {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// No `totals:` or `summary:` line.
    #[error("no totals: or summary: line")]
    NoTotal,
}

impl Profile {
    /// Reads the dump `text`.
    pub(crate) fn parse(text: &str) -> Result<Self, ParseError> {
        let mut names: HashMap<u64, String> = HashMap::new();
        let mut positions = 1usize;
        let mut total = None;
        let mut current: Option<String> = None;
        let mut callee: Option<String> = None;
        let mut pending_calls: Option<u64> = None;
        let mut own: HashMap<String, u64> = HashMap::new();
        let mut called: HashMap<String, u64> = HashMap::new();
        let mut allocator_calls = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            let err = |reason: String| ParseError::Line { line: i + 1, reason };
            let line = line.trim_end();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(rest) = line.strip_prefix("positions:") {
                positions = rest.split_whitespace().count().max(1);
            } else if let Some(rest) = line.strip_prefix("totals:").or_else(|| line.strip_prefix("summary:"))
            {
                let first = rest.split_whitespace().next().unwrap_or("");
                let value = first.parse::<u64>().map_err(|e| err(format!("total {first:?}: {e}")))?;
                // `totals:` comes last and wins over the header's `summary:`.
                if line.starts_with("totals:") || total.is_none() {
                    total = Some(value);
                }
            } else if let Some(rest) = line.strip_prefix("fn=") {
                let name = resolve(&mut names, rest).map_err(err)?;
                own.entry(name.clone()).or_default();
                current = Some(name);
            } else if let Some(rest) = line.strip_prefix("cfn=") {
                callee = Some(resolve(&mut names, rest).map_err(err)?);
            } else if let Some(rest) = line.strip_prefix("calls=") {
                let count = rest.split_whitespace().next().unwrap_or("");
                pending_calls = Some(count.parse().map_err(|e| err(format!("calls={count:?}: {e}")))?);
            } else if line.starts_with(|c: char| c.is_ascii_digit() || c == '+' || c == '-' || c == '*') {
                let cost = line.split_whitespace().nth(positions).unwrap_or("0");
                let cost: u64 = cost.parse().map_err(|e| err(format!("cost {cost:?}: {e}")))?;
                let Some(function) = &current else {
                    return Err(err("a cost line before any fn=".into()));
                };
                match pending_calls.take() {
                    Some(count) => {
                        let target = callee.take().ok_or_else(|| err("calls= without cfn=".into()))?;
                        if target != *function {
                            *called.entry(function.clone()).or_default() += cost;
                        }
                        let counted =
                            ALLOCATING.contains(&target.as_str()) || FREEING.contains(&target.as_str());
                        if counted && crate_of(function) != "allocator" {
                            *allocator_calls.entry(target).or_default() += count;
                        }
                    }
                    None => *own.entry(function.clone()).or_default() += cost,
                }
            }
            // Anything else (ob=, fl=, fi=, fe=, cob=, cfi=, jump=, events:, version:, ...) names
            // files and objects or carries what this reader does not use.
        }
        let total = total.ok_or(ParseError::NoTotal)?;
        let functions = own
            .into_iter()
            .map(|(name, exclusive)| {
                let inclusive = exclusive + called.get(&name).copied().unwrap_or(0);
                (name, FunctionCost { exclusive, inclusive })
            })
            .collect();
        Ok(Self { total, functions, allocator_calls })
    }

    /// Calls into the allocator that allocate.
    pub(crate) fn allocations(&self) -> u64 {
        ALLOCATING.iter().filter_map(|f| self.allocator_calls.get(*f)).sum()
    }

    /// Calls into the allocator that free.
    pub(crate) fn frees(&self) -> u64 {
        FREEING.iter().filter_map(|f| self.allocator_calls.get(*f)).sum()
    }

    /// Exclusive cost by crate ([`crate_of`]), most first.
    pub(crate) fn by_crate(&self) -> Vec<(String, u64)> {
        let mut crates: HashMap<&str, u64> = HashMap::new();
        for (name, cost) in &self.functions {
            *crates.entry(crate_of(name)).or_default() += cost.exclusive;
        }
        let mut crates: Vec<(String, u64)> = crates.into_iter().map(|(c, n)| (c.to_string(), n)).collect();
        crates.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        crates
    }

    /// The `n` functions of the highest inclusive cost, most first, the frames every call runs
    /// under left out: those of [`FRAME_CRATES`], and any of 99 % of the total or more (the
    /// gateway's own task, which holds everything). Listed, those frames would fill the table at
    /// 100 % each and say nothing.
    pub(crate) fn top_inclusive(&self, n: usize) -> Vec<(&str, &FunctionCost)> {
        let everything = self.total.saturating_mul(99) / 100;
        let mut functions: Vec<(&str, &FunctionCost)> = self
            .functions
            .iter()
            .filter(|(name, cost)| !FRAME_CRATES.contains(&crate_of(name)) && cost.inclusive < everything)
            .map(|(name, cost)| (name.as_str(), cost))
            .collect();
        functions.sort_by(|a, b| b.1.inclusive.cmp(&a.1.inclusive).then_with(|| a.0.cmp(b.0)));
        functions.truncate(n);
        functions
    }
}

/// A compressed name, `(ID) name` (defines ID) or `(ID)` (uses it), or a plain name.
fn resolve(names: &mut HashMap<u64, String>, text: &str) -> Result<String, String> {
    let Some(rest) = text.strip_prefix('(') else { return Ok(text.to_string()) };
    let (id, name) = rest.split_once(')').ok_or_else(|| format!("unclosed name id in {text:?}"))?;
    let id: u64 = id.parse().map_err(|e| format!("name id {id:?}: {e}"))?;
    let name = name.trim_start();
    if name.is_empty() {
        names.get(&id).cloned().ok_or_else(|| format!("name id ({id}) used before it was defined"))
    } else {
        names.insert(id, name.to_string());
        Ok(name.to_string())
    }
}

/// The crate a function belongs to, from its demangled name: the first path segment of a Rust
/// path (`h2::proto::...` is `h2`; `<hyper::X as tower::Service>::call` is `hyper`, the type's;
/// `core::ptr::drop_in_place<h2::...>` is `h2`, what is dropped); `mi_*` is `allocator`,
/// `memcpy`, `memmove`, `memset` and their variants are `libc mem*`, any other name without `::`
/// is `libc` (C code: glibc and the dynamic loader), and an address is `unknown`.
pub(crate) fn crate_of(name: &str) -> &str {
    let mut path = name;
    loop {
        let trimmed = path
            .trim_start_matches(['<', '&', '*', '[', '(', ' '])
            .trim_start_matches("mut ")
            .trim_start_matches("dyn ");
        if let Some(inner) = trimmed.strip_prefix("core::ptr::drop_in_place<") {
            path = inner;
        } else if trimmed.len() != path.len() {
            path = trimmed;
        } else {
            break;
        }
    }
    // `<T as core::fmt::Write>::...`: a type without a path is the trait's.
    if let Some((ty, trait_path)) = path.split_once(" as ")
        && !ty.contains("::")
    {
        path = trait_path;
    }
    if let Some((first, _)) = path.split_once("::") {
        let first = first.split(['<', '>', ' ', '(']).next().unwrap_or(first);
        if !first.is_empty() {
            return first;
        }
    }
    let c = name.trim_start_matches('_');
    if c.starts_with("mi_") || name.starts_with("_mi_") {
        "allocator"
    } else if ["memcpy", "memmove", "memset", "mempcpy"].iter().any(|m| c.starts_with(m)) {
        "libc mem*"
    } else if name.starts_with("0x") {
        "unknown"
    } else {
        "libc"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small dump in callgrind's own shape: name compression, relative positions, a call
    /// charged to the call and not to the caller, a recursion, allocator calls from inside and
    /// outside the allocator.
    const DUMP: &str = "\
# callgrind format
version: 1
creator: callgrind-3.22.0
pid: 4242
cmd:  switchyard gateway --threads 1
part: 1

desc: I1 cache:
positions: line
events: Ir
summary: 1000

ob=(1) /work/target/release/switchyard
fl=(1) src/main.rs
fn=(1) h2::proto::connection::Connection::poll
10 100
+2 50
cfn=(2) <hyper::proto::h2::server::Server as core::future::Future>::poll
calls=3 40
* 310
cfn=(3) mi_malloc_aligned
calls=5 0
-1 20
fn=(2)
40 300
cfn=(3)
calls=2 0
41 10
cfn=(2)
calls=1 40
42 77
fn=(3)
0 25
cfn=(4) mi_malloc
calls=1 0
0 5
fn=(4)
0 5
fn=(5) __memcpy_avx_unaligned_erms
0 40
fn=(6) core::ptr::drop_in_place<bytes::bytes::Bytes>
0 3
fn=(7) epoll_wait
0 2
fn=(9) std::thread::local::LocalKey<T>::with
0 0
cfn=(1)
calls=1 10
0 480
fn=(8) mi_free
0 0

totals: 525
";

    #[test]
    fn reads_totals_costs_calls_and_compressed_names() {
        let profile = Profile::parse(DUMP).unwrap_or_default();
        assert_eq!(profile.total, 525, "totals: wins over summary:");
        let poll = &profile.functions["h2::proto::connection::Connection::poll"];
        assert_eq!(poll.exclusive, 150, "call costs are not the caller's own");
        assert_eq!(poll.inclusive, 150 + 310 + 20);
        let server = &profile.functions["<hyper::proto::h2::server::Server as core::future::Future>::poll"];
        assert_eq!(server.exclusive, 300, "(2) resolves to the name defined by cfn=(2)");
        assert_eq!(server.inclusive, 310, "a direct recursion is not counted twice");
        assert_eq!(profile.functions["mi_malloc_aligned"].exclusive, 25);
        assert_eq!(profile.functions["mi_malloc"].exclusive, 5);
        assert_eq!(profile.allocations(), 7, "5 + 2 from outside the allocator, not its inner mi_malloc");
        assert_eq!(profile.allocator_calls.get("mi_malloc_aligned"), Some(&7));
        assert_eq!(profile.frees(), 0);
        let exclusive: u64 = profile.functions.values().map(|f| f.exclusive).sum();
        assert_eq!(exclusive, 525, "exclusive costs add up to the total");
    }

    #[test]
    fn groups_exclusive_cost_by_crate_and_ranks_inclusive_cost() {
        let profile = Profile::parse(DUMP).unwrap_or_default();
        let crates: BTreeMap<String, u64> = profile.by_crate().into_iter().collect();
        assert_eq!(crates["h2"], 150);
        assert_eq!(crates["hyper"], 300);
        assert_eq!(crates["allocator"], 30);
        assert_eq!(crates["libc mem*"], 40);
        assert_eq!(crates["bytes"], 3);
        assert_eq!(crates["libc"], 2);
        assert_eq!(profile.by_crate()[0].0, "hyper");
        let top = profile.top_inclusive(2);
        assert_eq!(profile.functions["std::thread::local::LocalKey<T>::with"].inclusive, 480);
        assert_eq!(top[0].0, "h2::proto::connection::Connection::poll", "std's frames are left out");
        assert_eq!(top[1].0, "<hyper::proto::h2::server::Server as core::future::Future>::poll");
    }

    #[test]
    fn names_crates() {
        assert_eq!(crate_of("tokio::runtime::task::raw::poll"), "tokio");
        assert_eq!(
            crate_of("<&mut T as core::fmt::Write>::write_str"),
            "core",
            "a bare type: the trait's crate"
        );
        assert_eq!(
            crate_of("<switchyard_balance::Balance<D> as tower_service::Service<R>>::call"),
            "switchyard_balance"
        );
        assert_eq!(crate_of("core::ptr::drop_in_place<<h2::X as y::Z>::W>"), "h2");
        assert_eq!(crate_of("alloc::vec::Vec<T,A>::push"), "alloc");
        assert_eq!(crate_of("<[http::header::map::Bucket<T>]>::len"), "http", "a slice: its element's");
        assert_eq!(crate_of("_mi_page_malloc"), "allocator");
        assert_eq!(crate_of("__memmove_avx_unaligned_erms"), "libc mem*");
        assert_eq!(crate_of("__GI___libc_write"), "libc");
        assert_eq!(crate_of("0x000000000001c3e0"), "unknown");
    }

    #[test]
    fn refuses_what_is_not_a_dump() {
        assert_eq!(Profile::parse("events: Ir\nfn=(1) f\n0 3\n"), Err(ParseError::NoTotal));
        let undefined = Profile::parse("fn=(7)\n0 1\ntotals: 1\n");
        assert!(matches!(undefined, Err(ParseError::Line { line: 1, .. })), "{undefined:?}");
        let stray = Profile::parse("0 1\ntotals: 1\n");
        assert!(matches!(stray, Err(ParseError::Line { line: 1, .. })), "{stray:?}");
    }
}
