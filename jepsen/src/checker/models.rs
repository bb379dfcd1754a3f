//! Sequential specifications for the linearizability checker
//! ([`super::linear`]): each model says what one operation may observe in a
//! given state and what state it leaves, how a history splits into
//! independent partitions (one per key), and how to turn a recorded
//! `history.jsonl` ([`crate::history::Op`]) into model operations.
//!
//! Models here:
//! - [`EtcdRegister`]: one integer register with read/write/cas, as in the
//!   Knossos-era Jepsen etcd logs (no versions).
//! - [`Kv`]: string values with get/put/append per key (the Porcupine `kv`
//!   histories and the `kv` workload).
//! - [`Register`]: the `register` workload: integer registers over many keys
//!   whose state also carries the key's etcd `version` and `mod_revision`,
//!   so every ok read/write must also report the version and mod revision
//!   that its place in the linearization implies.
//!
//! Models never look at wall-clock time or at other partitions; the search
//! in [`super::linear`] owns all of that.

use std::collections::HashMap;
use std::fmt::Debug;
use std::hash::Hash;

use serde_json::Value;

use crate::history::{pair_ops, Op, OpType};

/// One operation as the linearizability search sees it: an input, the
/// output it returned, and its real-time interval.
#[derive(Clone, Debug, PartialEq)]
pub struct Operation<I, O> {
    pub input: I,
    pub output: O,
    /// Invocation time.
    pub call: u64,
    /// Completion time; `None` for an indefinite operation (`info`, or never
    /// completed): it may be linearized anywhere after `call`, or not at all.
    pub ret: Option<u64>,
    /// `Op::index` of the invoke line.
    pub invoke_index: usize,
    /// `Op::index` of the completion line, if any.
    pub complete_index: Option<usize>,
}

impl<I, O> Operation<I, O> {
    /// The history indexes (`Op::index`) this operation came from.
    pub fn indexes(&self) -> impl Iterator<Item = usize> {
        std::iter::once(self.invoke_index).chain(self.complete_index)
    }
}

/// A sequential specification.
pub trait Model: Sync {
    type State: Clone + Eq + Hash + Send + Debug;
    type Input: Clone + Eq + Hash + Send + Sync + Debug;
    type Output: Clone + Eq + Hash + Send + Sync + Debug;

    /// The state before any operation.
    fn init(&self) -> Self::State;

    /// Applies `input` in `state`: `Some(next state)` if the operation may
    /// return `output` there, `None` if it may not.
    fn step(
        &self,
        state: &Self::State,
        input: &Self::Input,
        output: &Self::Output,
    ) -> Option<Self::State>;

    /// True if the operation never changes the state (a read). Dropping such
    /// an operation from a linearizable history leaves it linearizable, which
    /// the witness minimizer relies on.
    fn is_pure(&self, _input: &Self::Input) -> bool {
        false
    }

    /// Splits `ops` into independent sub-histories, each labelled (with its
    /// key) and given as positions in `ops`. The default is one partition.
    fn partition(&self, ops: &[Operation<Self::Input, Self::Output>]) -> Vec<(String, Vec<usize>)> {
        vec![(String::new(), (0..ops.len()).collect())]
    }

    /// A short human description of one operation.
    fn describe_op(&self, input: &Self::Input, output: &Self::Output) -> String {
        format!("{input:?} -> {output:?}")
    }

    /// A short human description of a state.
    fn describe_state(&self, state: &Self::State) -> String {
        format!("{state:?}")
    }
}

/// Groups operations by a key, in first-seen order.
fn partition_by<I, O>(
    ops: &[Operation<I, O>],
    key: impl Fn(&I) -> &str,
) -> Vec<(String, Vec<usize>)> {
    let mut slot: HashMap<&str, usize> = HashMap::new();
    let mut out: Vec<(String, Vec<usize>)> = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        let k = key(&op.input);
        let s = *slot.entry(k).or_insert_with(|| {
            out.push((k.to_string(), Vec::new()));
            out.len() - 1
        });
        out[s].1.push(i);
    }
    out
}

/// What a completion line means for one invoke, after pairing.
enum Completion<'a> {
    Ok(&'a Op),
    Fail,
    /// `info`, or the run ended before the op completed.
    Indefinite,
}

/// Pairs invokes with completions and hands each to `build`, which returns
/// the operation to check (or `None` to drop it).
fn operations_from<I, O>(
    ops: &[Op],
    mut build: impl FnMut(&Op, Completion<'_>) -> anyhow::Result<Option<(I, O)>>,
) -> anyhow::Result<Vec<Operation<I, O>>> {
    let mut out = Vec::new();
    for (inv, comp) in pair_ops(ops)? {
        let invoke = &ops[inv];
        let comp = comp.map(|c| &ops[c]);
        let completion = match comp {
            Some(c) if c.kind == OpType::Ok => Completion::Ok(c),
            Some(c) if c.kind == OpType::Fail => Completion::Fail,
            _ => Completion::Indefinite,
        };
        // A kept `fail` (a failed compare) returned at a known time too.
        let definite = !matches!(completion, Completion::Indefinite);
        if let Some((input, output)) = build(invoke, completion)? {
            out.push(Operation {
                input,
                output,
                call: invoke.time,
                ret: if definite { comp.map(|c| c.time) } else { None },
                invoke_index: invoke.index,
                complete_index: comp.map(|c| c.index),
            });
        }
    }
    Ok(out)
}

fn int_or_null(v: &Value, what: &str, op: &Op) -> anyhow::Result<Option<i64>> {
    match v {
        Value::Null => Ok(None),
        v => v
            .as_i64()
            .map(Some)
            .ok_or_else(|| anyhow::anyhow!("op {}: {what} is not an integer: {v}", op.index)),
    }
}

fn int(v: &Value, what: &str, op: &Op) -> anyhow::Result<i64> {
    int_or_null(v, what, op)?.ok_or_else(|| anyhow::anyhow!("op {}: {what} is missing", op.index))
}

fn cas_args(op: &Op) -> anyhow::Result<(i64, i64)> {
    match op.value.as_array().map(Vec::as_slice) {
        Some([from, to]) => Ok((int(from, "cas from", op)?, int(to, "cas to", op)?)),
        _ => anyhow::bail!("op {}: cas value is not [from, to]: {}", op.index, op.value),
    }
}

// ---------------------------------------------------------------------------
// etcd register (Knossos-era Jepsen logs)

/// A register operation's request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RegisterInput {
    Read,
    Write(i64),
    Cas { from: i64, to: i64 },
}

impl RegisterInput {
    fn from_op(op: &Op) -> anyhow::Result<Self> {
        Ok(match op.f.as_str() {
            "read" => RegisterInput::Read,
            "write" => RegisterInput::Write(int(&op.value, "write value", op)?),
            "cas" => {
                let (from, to) = cas_args(op)?;
                RegisterInput::Cas { from, to }
            }
            f => anyhow::bail!("op {}: not a register op: {f}", op.index),
        })
    }
}

/// What an [`EtcdRegister`] operation returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EtcdOutput {
    /// A read's value (`None`: the key did not exist).
    Read(Option<i64>),
    /// A write, or a cas whose compare succeeded.
    Done,
    /// A cas whose compare definitely failed: the register did not hold
    /// `from` at its linearization point.
    CasFailed,
    /// Indefinite (`info`): it took effect or it did not.
    Unknown,
}

/// A single integer register with read, write and compare-and-set, starting
/// empty (`nil`).
#[derive(Clone, Copy, Debug, Default)]
pub struct EtcdRegister;

impl Model for EtcdRegister {
    type State = Option<i64>;
    type Input = RegisterInput;
    type Output = EtcdOutput;

    fn init(&self) -> Option<i64> {
        None
    }

    fn step(
        &self,
        state: &Option<i64>,
        input: &RegisterInput,
        output: &EtcdOutput,
    ) -> Option<Option<i64>> {
        match (input, output) {
            (RegisterInput::Read, EtcdOutput::Read(v)) => (v == state).then_some(*state),
            (RegisterInput::Read, EtcdOutput::Unknown) => Some(*state),
            (RegisterInput::Write(v), EtcdOutput::Done | EtcdOutput::Unknown) => Some(Some(*v)),
            (RegisterInput::Cas { from, to }, EtcdOutput::Done | EtcdOutput::Unknown) => {
                (*state == Some(*from)).then_some(Some(*to))
            }
            (RegisterInput::Cas { from, .. }, EtcdOutput::CasFailed) => {
                (*state != Some(*from)).then_some(*state)
            }
            _ => None,
        }
    }

    fn is_pure(&self, input: &RegisterInput) -> bool {
        matches!(input, RegisterInput::Read)
    }

    fn describe_op(&self, input: &RegisterInput, output: &EtcdOutput) -> String {
        match (input, output) {
            (RegisterInput::Read, EtcdOutput::Read(v)) => format!("read -> {}", show(v)),
            (RegisterInput::Write(v), _) => format!("write {v}{}", unknown(output)),
            (RegisterInput::Cas { from, to }, EtcdOutput::CasFailed) => {
                format!("cas {from}->{to} (compare failed)")
            }
            (RegisterInput::Cas { from, to }, _) => format!("cas {from}->{to}{}", unknown(output)),
            (i, o) => format!("{i:?} -> {o:?}"),
        }
    }

    fn describe_state(&self, state: &Option<i64>) -> String {
        show(state)
    }
}

fn show(v: &Option<i64>) -> String {
    v.map_or_else(|| "nil".to_string(), |v| v.to_string())
}

fn unknown(output: &EtcdOutput) -> &'static str {
    if *output == EtcdOutput::Unknown {
        " (indefinite)"
    } else {
        ""
    }
}

impl EtcdRegister {
    /// Model operations of a single-register history (`f` read/write/cas,
    /// keys ignored). A failed read carries no information and is dropped; a
    /// failed cas is a definite compare failure (as the Jepsen etcd client
    /// reports it); a failed write did not happen and is dropped.
    pub fn operations(ops: &[Op]) -> anyhow::Result<Vec<Operation<RegisterInput, EtcdOutput>>> {
        operations_from(ops, |invoke, completion| {
            let input = RegisterInput::from_op(invoke)?;
            Ok(match (input, completion) {
                (RegisterInput::Read, Completion::Ok(c)) => Some((
                    input,
                    EtcdOutput::Read(int_or_null(&c.value, "read value", c)?),
                )),
                (_, Completion::Ok(_)) => Some((input, EtcdOutput::Done)),
                (RegisterInput::Cas { .. }, Completion::Fail) => {
                    Some((input, EtcdOutput::CasFailed))
                }
                (RegisterInput::Read, _) | (_, Completion::Fail) => None,
                (_, Completion::Indefinite) => Some((input, EtcdOutput::Unknown)),
            })
        })
    }
}

// ---------------------------------------------------------------------------
// kv: get/put/append on string values

/// A kv request.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum KvInput {
    Get { key: String },
    Put { key: String, value: String },
    Append { key: String, value: String },
}

impl KvInput {
    fn key(&self) -> &str {
        match self {
            KvInput::Get { key } | KvInput::Put { key, .. } | KvInput::Append { key, .. } => key,
        }
    }
}

/// What a kv operation returned.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum KvOutput {
    /// A get's value (`""` for a missing key).
    Get(String),
    /// A put or append.
    Done,
    /// Indefinite.
    Unknown,
}

/// String values per key with get, put and append; a missing key reads as
/// `""`. Partitioned per key.
#[derive(Clone, Copy, Debug, Default)]
pub struct Kv;

impl Model for Kv {
    type State = String;
    type Input = KvInput;
    type Output = KvOutput;

    fn init(&self) -> String {
        String::new()
    }

    fn step(&self, state: &String, input: &KvInput, output: &KvOutput) -> Option<String> {
        match (input, output) {
            (KvInput::Get { .. }, KvOutput::Get(v)) => (v == state).then(|| state.clone()),
            (KvInput::Get { .. }, KvOutput::Unknown) => Some(state.clone()),
            (KvInput::Put { value, .. }, KvOutput::Done | KvOutput::Unknown) => Some(value.clone()),
            (KvInput::Append { value, .. }, KvOutput::Done | KvOutput::Unknown) => {
                Some(format!("{state}{value}"))
            }
            _ => None,
        }
    }

    fn is_pure(&self, input: &KvInput) -> bool {
        matches!(input, KvInput::Get { .. })
    }

    fn partition(&self, ops: &[Operation<KvInput, KvOutput>]) -> Vec<(String, Vec<usize>)> {
        partition_by(ops, KvInput::key)
    }

    fn describe_op(&self, input: &KvInput, output: &KvOutput) -> String {
        match (input, output) {
            (KvInput::Get { key }, KvOutput::Get(v)) => format!("get {key} -> {v:?}"),
            (KvInput::Put { key, value }, _) => format!("put {key} {value:?}"),
            (KvInput::Append { key, value }, _) => format!("append {key} {value:?}"),
            (i, o) => format!("{i:?} -> {o:?}"),
        }
    }
}

impl Kv {
    /// Model operations of a `kv` history (`f` get/put/append, `key` set,
    /// string values). Failed and indefinite gets are dropped; failed
    /// puts/appends did not happen.
    pub fn operations(ops: &[Op]) -> anyhow::Result<Vec<Operation<KvInput, KvOutput>>> {
        let text = |v: &Value, op: &Op| -> anyhow::Result<String> {
            match v {
                Value::String(s) => Ok(s.clone()),
                Value::Null => Ok(String::new()),
                v => anyhow::bail!("op {}: kv value is not a string: {v}", op.index),
            }
        };
        operations_from(ops, |invoke, completion| {
            let key = invoke
                .key
                .clone()
                .ok_or_else(|| anyhow::anyhow!("op {}: kv op without a key", invoke.index))?;
            let input = match invoke.f.as_str() {
                "get" => KvInput::Get { key },
                "put" => KvInput::Put {
                    key,
                    value: text(&invoke.value, invoke)?,
                },
                "append" => KvInput::Append {
                    key,
                    value: text(&invoke.value, invoke)?,
                },
                f => anyhow::bail!("op {}: not a kv op: {f}", invoke.index),
            };
            Ok(match (&input, completion) {
                (KvInput::Get { .. }, Completion::Ok(c)) => {
                    let v = text(&c.value, c)?;
                    Some((input, KvOutput::Get(v)))
                }
                (_, Completion::Ok(_)) => Some((input, KvOutput::Done)),
                (KvInput::Get { .. }, _) | (_, Completion::Fail) => None,
                (_, Completion::Indefinite) => Some((input, KvOutput::Unknown)),
            })
        })
    }
}

// ---------------------------------------------------------------------------
// register workload: versioned registers over many keys

/// A `register` workload request on one key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KeyedInput {
    pub key: String,
    pub op: RegisterInput,
}

/// What a `register` workload operation returned, with the key metadata the
/// server reported (absent fields are not checked).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RegisterOutput {
    Read {
        value: Option<i64>,
        version: Option<i64>,
        mod_revision: Option<i64>,
    },
    /// A write, or a cas whose compare succeeded.
    Written {
        version: Option<i64>,
        mod_revision: Option<i64>,
    },
    /// Indefinite write or cas.
    Unknown,
}

/// One key's state: its value, its etcd version (number of writes since
/// creation; 0 when absent) and the mod revision of the last write, when
/// known (`None` after an indefinite write nobody has observed yet).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RegisterState {
    pub value: Option<i64>,
    pub version: i64,
    pub mod_revision: Option<i64>,
}

/// The `register` workload's model: integer registers per key, where a
/// linearization must also explain every reported version (the number of
/// writes before, plus one) and mod revision (equal to the last write's,
/// strictly increasing across writes). Failed ops are dropped: a failed read
/// carries no information and a failed write or cas did not happen.
#[derive(Clone, Copy, Debug, Default)]
pub struct Register;

impl Model for Register {
    type State = RegisterState;
    type Input = KeyedInput;
    type Output = RegisterOutput;

    fn init(&self) -> RegisterState {
        RegisterState {
            value: None,
            version: 0,
            mod_revision: Some(0),
        }
    }

    fn step(
        &self,
        s: &RegisterState,
        input: &KeyedInput,
        output: &RegisterOutput,
    ) -> Option<RegisterState> {
        let written = |value: i64, version: Option<i64>, mod_revision: Option<i64>| {
            let next = s.version + 1;
            if version.is_some_and(|v| v != next) {
                return None;
            }
            if let (Some(m), Some(prev)) = (mod_revision, s.mod_revision) {
                if m <= prev {
                    return None;
                }
            }
            Some(RegisterState {
                value: Some(value),
                version: next,
                mod_revision,
            })
        };
        match (&input.op, output) {
            (
                RegisterInput::Read,
                RegisterOutput::Read {
                    value,
                    version,
                    mod_revision,
                },
            ) => {
                if *value != s.value || version.is_some_and(|v| v != s.version) {
                    return None;
                }
                match (mod_revision, s.mod_revision) {
                    // An absent key reads with no metadata at all.
                    (_, _) if value.is_none() => Some(*s),
                    (Some(m), Some(known)) => (*m == known).then_some(*s),
                    // The last write was indefinite: this read tells us its
                    // mod revision.
                    (Some(m), None) => Some(RegisterState {
                        mod_revision: Some(*m),
                        ..*s
                    }),
                    (None, _) => Some(*s),
                }
            }
            (
                RegisterInput::Write(v),
                RegisterOutput::Written {
                    version,
                    mod_revision,
                },
            ) => written(*v, *version, *mod_revision),
            (RegisterInput::Write(v), RegisterOutput::Unknown) => written(*v, None, None),
            (
                RegisterInput::Cas { from, to },
                RegisterOutput::Written {
                    version,
                    mod_revision,
                },
            ) => {
                if s.value != Some(*from) {
                    return None;
                }
                written(*to, *version, *mod_revision)
            }
            (RegisterInput::Cas { from, to }, RegisterOutput::Unknown) => {
                if s.value != Some(*from) {
                    return None;
                }
                written(*to, None, None)
            }
            _ => None,
        }
    }

    fn is_pure(&self, input: &KeyedInput) -> bool {
        matches!(input.op, RegisterInput::Read)
    }

    fn partition(
        &self,
        ops: &[Operation<KeyedInput, RegisterOutput>],
    ) -> Vec<(String, Vec<usize>)> {
        partition_by(ops, |i| i.key.as_str())
    }

    fn describe_op(&self, input: &KeyedInput, output: &RegisterOutput) -> String {
        let meta = |version: &Option<i64>, m: &Option<i64>| match (version, m) {
            (None, None) => String::new(),
            (v, m) => format!(
                " (version {}, mod_revision {})",
                v.map_or("?".into(), |v| v.to_string()),
                m.map_or("?".into(), |v| v.to_string())
            ),
        };
        let k = &input.key;
        match (&input.op, output) {
            (
                RegisterInput::Read,
                RegisterOutput::Read {
                    value,
                    version,
                    mod_revision,
                },
            ) => format!("read {k} -> {}{}", show(value), meta(version, mod_revision)),
            (
                RegisterInput::Write(v),
                RegisterOutput::Written {
                    version,
                    mod_revision,
                },
            ) => {
                format!("write {k} {v}{}", meta(version, mod_revision))
            }
            (
                RegisterInput::Cas { from, to },
                RegisterOutput::Written {
                    version,
                    mod_revision,
                },
            ) => {
                format!("cas {k} {from}->{to}{}", meta(version, mod_revision))
            }
            (RegisterInput::Write(v), RegisterOutput::Unknown) => {
                format!("write {k} {v} (indefinite)")
            }
            (RegisterInput::Cas { from, to }, RegisterOutput::Unknown) => {
                format!("cas {k} {from}->{to} (indefinite)")
            }
            (i, o) => format!("{i:?} -> {o:?}"),
        }
    }

    fn describe_state(&self, s: &RegisterState) -> String {
        format!(
            "{} (version {}, mod_revision {})",
            show(&s.value),
            s.version,
            s.mod_revision.map_or("?".into(), |m| m.to_string())
        )
    }
}

impl Register {
    /// Model operations of a `register` workload history. An ok write/cas's
    /// mod revision is its `mod_revision`, else the response `revision` (a
    /// single-key write creates exactly that revision).
    pub fn operations(ops: &[Op]) -> anyhow::Result<Vec<Operation<KeyedInput, RegisterOutput>>> {
        operations_from(ops, |invoke, completion| {
            let key = invoke
                .key
                .clone()
                .ok_or_else(|| anyhow::anyhow!("op {}: register op without a key", invoke.index))?;
            let op = RegisterInput::from_op(invoke)?;
            let input = KeyedInput { key, op };
            Ok(match (op, completion) {
                (RegisterInput::Read, Completion::Ok(c)) => Some((
                    input,
                    RegisterOutput::Read {
                        value: int_or_null(&c.value, "read value", c)?,
                        version: c.version,
                        mod_revision: c.mod_revision,
                    },
                )),
                (_, Completion::Ok(c)) => Some((
                    input,
                    RegisterOutput::Written {
                        version: c.version,
                        mod_revision: c.mod_revision.or(c.revision),
                    },
                )),
                (RegisterInput::Read, _) | (_, Completion::Fail) => None,
                (_, Completion::Indefinite) => Some((input, RegisterOutput::Unknown)),
            })
        })
    }
}

/// Test support: builds histories by hand and simulates a linearizable
/// etcd-like store running the `register` workload.
#[cfg(test)]
pub(crate) mod sim {
    use std::collections::HashMap;

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use serde_json::{json, Value};

    use crate::history::{Op, OpType};

    /// A hand-written history: every call is one tick later than the last.
    #[derive(Default)]
    pub(crate) struct Builder {
        pub(crate) ops: Vec<Op>,
        open: HashMap<u64, usize>,
    }

    impl Builder {
        fn push(
            &mut self,
            process: u64,
            kind: OpType,
            f: &str,
            key: &str,
            value: Value,
        ) -> &mut Op {
            let index = self.ops.len();
            self.ops.push(Op {
                index,
                process,
                time: index as u64 * 10,
                kind,
                f: f.into(),
                key: Some(key.into()),
                value,
                revision: None,
                version: None,
                mod_revision: None,
                node: None,
                error: None,
            });
            &mut self.ops[index]
        }

        /// Invokes `f` on `key` from `process`; returns the invoke's index.
        pub(crate) fn invoke(&mut self, process: u64, f: &str, key: &str, value: Value) -> usize {
            self.push(process, OpType::Invoke, f, key, value);
            let i = self.ops.len() - 1;
            self.open.insert(process, i);
            i
        }

        /// Completes `process`'s open op with `kind` and `value`.
        pub(crate) fn complete(&mut self, process: u64, kind: OpType, value: Value) -> &mut Op {
            let inv = self.open.remove(&process).expect("an open op");
            let (f, key) = (self.ops[inv].f.clone(), self.ops[inv].key.clone().unwrap());
            self.push(process, kind, &f, &key, value)
        }

        /// An ok write completing at mod revision `rev` with `version`.
        pub(crate) fn ok_write(&mut self, process: u64, rev: i64, version: i64) -> &mut Op {
            let v = self.ops[self.open[&process]].value.clone();
            let op = self.complete(process, OpType::Ok, v);
            op.revision = Some(rev);
            op.mod_revision = Some(rev);
            op.version = Some(version);
            op
        }

        /// An ok read of `value` written at `mod_rev` (version `version`),
        /// observed at store revision `rev`.
        pub(crate) fn ok_read(
            &mut self,
            process: u64,
            value: Option<i64>,
            mod_rev: i64,
            version: i64,
            rev: i64,
        ) -> &mut Op {
            let op = self.complete(process, OpType::Ok, json!(value));
            op.revision = Some(rev);
            if value.is_some() {
                op.mod_revision = Some(mod_rev);
                op.version = Some(version);
            }
            op
        }

        /// A sequential write: invoke and ok.
        pub(crate) fn write(
            &mut self,
            process: u64,
            key: &str,
            v: i64,
            rev: i64,
            version: i64,
        ) -> usize {
            let i = self.invoke(process, "write", key, json!(v));
            self.ok_write(process, rev, version);
            i
        }

        /// A sequential read: invoke and ok.
        pub(crate) fn read(
            &mut self,
            process: u64,
            key: &str,
            value: Option<i64>,
            mod_rev: i64,
            version: i64,
            rev: i64,
        ) -> usize {
            let i = self.invoke(process, "read", key, Value::Null);
            self.ok_read(process, value, mod_rev, version, rev);
            i
        }
    }

    enum Pending {
        NotApplied,
        Read {
            value: Option<(i64, i64, i64)>,
            rev: i64,
        },
        Written {
            rev: i64,
            version: i64,
        },
        CasFailed {
            rev: i64,
        },
    }

    struct Slot {
        process: u64,
        op: Option<(usize, Pending)>,
    }

    /// Simulates `n` `register` workload ops by `concurrency` clients over
    /// `keys` keys against a linearizable store: each op takes effect at one
    /// instant between its invoke and completion. A fraction `indefinite`
    /// of completions are `info` (applied or not) and retire the process;
    /// a few ops never complete. Values are small integers, so the same
    /// value is written many times.
    pub(crate) fn register_history(
        seed: u64,
        n: usize,
        keys: usize,
        concurrency: usize,
        indefinite: f64,
    ) -> Vec<Op> {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut store: HashMap<String, (i64, i64, i64)> = HashMap::new();
        let mut revision = 1i64;
        let mut ops: Vec<Op> = Vec::with_capacity(2 * n);
        let mut slots: Vec<Slot> = (0..concurrency)
            .map(|p| Slot {
                process: p as u64,
                op: None,
            })
            .collect();
        let mut next_process = concurrency as u64;
        let mut invoked = 0;
        let mut time = 0u64;
        let base = |index: usize,
                    process: u64,
                    time: u64,
                    kind: OpType,
                    f: &str,
                    key: &str,
                    value: Value| Op {
            index,
            process,
            time,
            kind,
            f: f.into(),
            key: Some(key.into()),
            value,
            revision: None,
            version: None,
            mod_revision: None,
            node: None,
            error: None,
        };
        loop {
            if invoked >= n && slots.iter().all(|s| s.op.is_none()) {
                break;
            }
            time += rng.gen_range(1..50);
            let s = rng.gen_range(0..slots.len());
            let slot = &mut slots[s];
            match slot.op.take() {
                None => {
                    if invoked >= n {
                        continue;
                    }
                    invoked += 1;
                    let key = format!("k{}", rng.gen_range(0..keys));
                    let (f, value) = match rng.gen_range(0..10) {
                        0..=4 => ("read", Value::Null),
                        5..=7 => ("write", json!(rng.gen_range(0..5))),
                        _ => ("cas", json!([rng.gen_range(0..5), rng.gen_range(0..5)])),
                    };
                    ops.push(base(
                        ops.len(),
                        slot.process,
                        time,
                        OpType::Invoke,
                        f,
                        &key,
                        value,
                    ));
                    slot.op = Some((ops.len() - 1, Pending::NotApplied));
                }
                Some((inv, Pending::NotApplied)) => {
                    let (f, key) = (ops[inv].f.clone(), ops[inv].key.clone().unwrap());
                    if rng.gen_bool(indefinite / 2.0) {
                        // Times out before taking effect.
                        ops.push(base(
                            ops.len(),
                            slot.process,
                            time,
                            OpType::Info,
                            &f,
                            &key,
                            ops[inv].value.clone(),
                        ));
                        slot.process = next_process;
                        next_process += 1;
                        continue;
                    }
                    let cur = store.get(&key).copied();
                    let pending = match f.as_str() {
                        "read" => Pending::Read {
                            value: cur,
                            rev: revision,
                        },
                        _ => {
                            let to = match f.as_str() {
                                "write" => Some(ops[inv].value.as_i64().unwrap()),
                                _ => {
                                    let (from, to) = (
                                        ops[inv].value[0].as_i64().unwrap(),
                                        ops[inv].value[1].as_i64().unwrap(),
                                    );
                                    (cur.map(|c| c.0) == Some(from)).then_some(to)
                                }
                            };
                            match to {
                                Some(v) => {
                                    revision += 1;
                                    let version = cur.map_or(1, |c| c.1 + 1);
                                    store.insert(key, (v, version, revision));
                                    Pending::Written {
                                        rev: revision,
                                        version,
                                    }
                                }
                                None => Pending::CasFailed { rev: revision },
                            }
                        }
                    };
                    slot.op = Some((inv, pending));
                }
                Some((inv, pending)) => {
                    let (f, key) = (ops[inv].f.clone(), ops[inv].key.clone().unwrap());
                    let index = ops.len();
                    if rng.gen_bool(indefinite / 2.0) {
                        // Took effect, but the client never heard back.
                        ops.push(base(
                            index,
                            slot.process,
                            time,
                            OpType::Info,
                            &f,
                            &key,
                            ops[inv].value.clone(),
                        ));
                        slot.process = next_process;
                        next_process += 1;
                        continue;
                    }
                    let mut op = base(
                        index,
                        slot.process,
                        time,
                        OpType::Ok,
                        &f,
                        &key,
                        ops[inv].value.clone(),
                    );
                    match pending {
                        Pending::Read { value, rev } => {
                            op.value = json!(value.map(|v| v.0));
                            op.revision = Some(rev);
                            if let Some((_, version, m)) = value {
                                op.version = Some(version);
                                op.mod_revision = Some(m);
                            }
                        }
                        Pending::Written { rev, version } => {
                            op.revision = Some(rev);
                            op.mod_revision = Some(rev);
                            op.version = Some(version);
                        }
                        Pending::CasFailed { rev } => {
                            op.kind = OpType::Fail;
                            op.revision = Some(rev);
                            op.error = Some("compare failed".into());
                        }
                        Pending::NotApplied => unreachable!("handled above"),
                    }
                    ops.push(op);
                }
            }
            // Leave the last few ops of a run hanging, as a run that ends
            // mid-flight does.
            if invoked >= n && rng.gen_bool(0.01) {
                break;
            }
        }
        ops
    }
}
