//! `controllers`: placeholder crate; the orchestration/tooling issues fill it in. It has no code yet.
