//! CPU placement (`[engine] cpus`, `onnxd bench --cpus`): a CPU list as Linux writes it
//! ("0-2,5"), parsed and checked once; pinning the calling thread to one; and the split of a
//! process's threads that the setting asks for. Inference threads run on the listed CPUs, and
//! so do ONNX Runtime's intra-op threads, because a thread starts on its creator's CPUs and the
//! sessions are built while their thread is pinned ([`while_pinned`]). Every other thread (the
//! transports, cameras, MQTT) runs on the CPUs left ([`reserve`]). The engine then never
//! shares its cores with request parsing, and its replies wake threads that run elsewhere.

use std::fmt;
use std::io;
use std::str::FromStr;
use std::sync::OnceLock;

use rustix::thread::{sched_getaffinity, sched_setaffinity, CpuSet};

/// A set of CPUs, in ascending order; empty means "anywhere" (no pinning).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct CpuList(Vec<usize>);

impl CpuList {
    /// No CPU: threads run wherever the scheduler puts them.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The CPUs, ascending.
    pub fn cpus(&self) -> &[usize] {
        &self.0
    }

    /// The CPUs the calling thread may run on.
    pub fn of_this_thread() -> io::Result<CpuList> {
        let set = sched_getaffinity(None)?;
        Ok(CpuList(
            (0..CpuSet::MAX_CPU).filter(|&cpu| set.is_set(cpu)).collect(),
        ))
    }

    /// The CPUs this process may run on (a unit's `CPUAffinity=` or `taskset` narrow them):
    /// those of the calling thread, or what they were before [`reserve`] narrowed them.
    pub fn of_this_process() -> io::Result<CpuList> {
        match PROCESS_CPUS.get() {
            Some(cpus) => Ok(cpus.clone()),
            None => CpuList::of_this_thread(),
        }
    }

    /// Refuses a list naming a CPU this process may not run on, naming it.
    pub fn check_allowed(&self) -> Result<(), String> {
        if self.is_empty() {
            return Ok(());
        }
        let allowed =
            CpuList::of_this_process().map_err(|e| format!("cannot read this process's CPUs: {e}"))?;
        match self.without(&allowed).cpus().first() {
            Some(cpu) => Err(format!(
                "CPU {cpu} is not one this process may run on ({allowed})"
            )),
            None => Ok(()),
        }
    }

    /// These CPUs less `other`'s.
    pub fn without(&self, other: &CpuList) -> CpuList {
        CpuList(
            self.0
                .iter()
                .copied()
                .filter(|cpu| !other.0.contains(cpu))
                .collect(),
        )
    }

    /// Pins the calling thread (and the threads it starts from now on) to these CPUs; an
    /// empty list leaves it where it is.
    pub fn pin_this_thread(&self) -> io::Result<()> {
        if self.is_empty() {
            return Ok(());
        }
        let mut set = CpuSet::new();
        for &cpu in &self.0 {
            set.set(cpu);
        }
        Ok(sched_setaffinity(None, &set)?)
    }
}

/// The process's CPUs as they were before [`reserve`] narrowed the threads to the rest.
static PROCESS_CPUS: OnceLock<CpuList> = OnceLock::new();

/// Runs `f` with the calling thread pinned to `cpus`, then puts the thread back on the CPUs it
/// had, also when `f` panics. Threads `f` starts (ONNX Runtime's intra-op pool, built with a
/// session) keep `cpus`. Only pinning can fail; a failure to move back is logged.
pub fn while_pinned<T>(cpus: &CpuList, f: impl FnOnce() -> T) -> io::Result<T> {
    if cpus.is_empty() {
        return Ok(f());
    }
    let before = CpuList::of_this_thread()?;
    cpus.pin_this_thread()?;
    let _back = PutBack(before);
    Ok(f())
}

/// Puts the thread back on its CPUs when dropped ([`while_pinned`]).
struct PutBack(CpuList);

impl Drop for PutBack {
    fn drop(&mut self) {
        if let Err(e) = self.0.pin_this_thread() {
            tracing::warn!(error = %e, cpus = %self.0, "cannot put a thread back on its CPUs");
        }
    }
}

/// Keeps the engine's CPUs for the engine: pins the calling thread, and so every thread it
/// starts from now on, to the CPUs it may use less `engine`'s. When none are left (the list
/// names them all) the other threads share them, and nothing changes. A list naming a CPU
/// the process may not use is refused ([`CpuList::check_allowed`]). Call it once, before
/// starting threads; [`CpuList::of_this_process`] still answers the CPUs before it.
pub fn reserve(engine: &CpuList) -> Result<(), String> {
    engine.check_allowed()?;
    if engine.is_empty() {
        return Ok(());
    }
    let process = CpuList::of_this_thread().map_err(|e| format!("cannot read this thread's CPUs: {e}"))?;
    let rest = process.without(engine);
    let _ = PROCESS_CPUS.set(process);
    rest.pin_this_thread()
        .map_err(|e| format!("cannot pin the daemon's threads to CPUs {rest}: {e}"))
}

impl FromStr for CpuList {
    type Err = String;

    /// "0-3,6": CPUs and inclusive ranges, comma-separated; "" is the empty list.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut cpus = Vec::new();
        if text.trim().is_empty() {
            return Ok(CpuList(cpus));
        }
        for item in text.split(',').map(str::trim) {
            let (first, last) = item.split_once('-').unwrap_or((item, item));
            let (first, last) = (cpu_number(first, text)?, cpu_number(last, text)?);
            if first > last {
                return Err(format!("the range \"{item}\" runs backwards"));
            }
            cpus.extend(first..=last);
        }
        cpus.sort_unstable();
        cpus.dedup();
        Ok(CpuList(cpus))
    }
}

fn cpu_number(text: &str, list: &str) -> Result<usize, String> {
    let text = text.trim();
    let digits = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    let cpu: usize = digits
        .then(|| text.parse().ok())
        .flatten()
        .ok_or_else(|| format!("expected a CPU list such as \"0-3,6\", not \"{list}\""))?;
    if cpu >= CpuSet::MAX_CPU {
        return Err(format!(
            "CPU {cpu} is past the last one a thread can be pinned to ({})",
            CpuSet::MAX_CPU - 1
        ));
    }
    Ok(cpu)
}

impl fmt::Display for CpuList {
    /// The shortest list form: "0-3,6".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ranges: Vec<(usize, usize)> = Vec::new();
        for &cpu in &self.0 {
            match ranges.last_mut() {
                Some((_, last)) if *last + 1 == cpu => *last = cpu,
                _ => ranges.push((cpu, cpu)),
            }
        }
        let items: Vec<String> = ranges
            .iter()
            .map(|&(first, last)| match first == last {
                true => first.to_string(),
                false => format!("{first}-{last}"),
            })
            .collect();
        f.write_str(&items.join(","))
    }
}

impl TryFrom<String> for CpuList {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<CpuList> for String {
    fn from(list: CpuList) -> String {
        list.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(text: &str) -> CpuList {
        text.parse().unwrap()
    }

    #[test]
    fn lists_parse_as_linux_writes_them_and_print_back_in_short_form() {
        assert_eq!(list("").cpus(), &[] as &[usize]);
        assert_eq!(list(" ").cpus(), &[] as &[usize]);
        assert_eq!(list("3").cpus(), &[3]);
        assert_eq!(list("0-2, 5 ,4,1").cpus(), &[0, 1, 2, 4, 5]);
        assert_eq!(list("0-2,5,4,1").to_string(), "0-2,4-5");
        assert_eq!(list("7,3").to_string(), "3,7");
    }

    #[test]
    fn bad_lists_are_refused_with_what_is_wrong() {
        let err = |text: &str| text.parse::<CpuList>().unwrap_err();
        assert!(err("0-x").contains("expected a CPU list such as \"0-3,6\", not \"0-x\""));
        assert!(err("first").contains("not \"first\""));
        assert!(err("4-1").contains("\"4-1\" runs backwards"), "{}", err("4-1"));
        assert!(err("-1").contains("CPU list"));
        assert!(err(",").contains("not \",\""), "{}", err(","));
        assert!(err("1,,2").contains("CPU list"));
        assert!(err("+1").contains("CPU list"));
        assert!(err("99999999999999999999999").contains("CPU list"));
        assert!(
            err("100000").contains("CPU 100000 is past the last one"),
            "{}",
            err("100000")
        );
    }

    #[test]
    fn set_operations() {
        assert_eq!(list("0-3").without(&list("1,3")), list("0,2"));
        assert!(list("0-1").without(&list("0-3")).is_empty());
        assert_eq!(list("2,5,9").without(&list("0-4")), list("5,9"));
    }

    #[test]
    fn a_thread_is_pinned_while_asked_and_put_back_after() {
        std::thread::spawn(|| {
            let before = CpuList::of_this_thread().unwrap();
            let first = CpuList(vec![before.cpus()[0]]);
            let inside = while_pinned(&first, || {
                let child = std::thread::spawn(|| CpuList::of_this_thread().unwrap())
                    .join()
                    .unwrap();
                (CpuList::of_this_thread().unwrap(), child)
            })
            .unwrap();
            assert_eq!(inside, (first.clone(), first.clone()));
            assert_eq!(CpuList::of_this_thread().unwrap(), before);
            // Also when what runs pinned panics (a session build caught by the repository).
            let unwound =
                std::panic::catch_unwind(|| while_pinned(&first, || panic!("a panic while pinned")));
            assert!(unwound.is_err());
            assert_eq!(CpuList::of_this_thread().unwrap(), before);
            assert_eq!(while_pinned(&CpuList::default(), || 7).unwrap(), 7);
        })
        .join()
        .unwrap();
    }
}
