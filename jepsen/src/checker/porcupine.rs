//! Readers for the Porcupine reference histories (kept under
//! `shared/testdata/porcupine/`), turning them into our own
//! [`crate::history::Op`] lines so the checkers can be validated on them:
//! - [`parse_etcd_log`]: Knossos-era Jepsen logs of one etcd register, lines
//!   like `INFO  jepsen.util - 3\t:ok\t:cas\t[3 0]`.
//! - [`parse_kv`]: EDN maps, one per line, like
//!   `{:process 0, :type :ok, :f :get, :key "5", :value ""}`.
//!
//! The files carry no timestamps: an op's `time` is its line number, which
//! preserves the real-time order the files record. This module only parses;
//! verdicts come from [`super::linear`].

use serde_json::Value;

use crate::history::{Op, OpType};

fn op_type(word: &str, line: usize) -> anyhow::Result<OpType> {
    Ok(match word {
        ":invoke" | "invoke" => OpType::Invoke,
        ":ok" | "ok" => OpType::Ok,
        ":fail" | "fail" => OpType::Fail,
        ":info" | "info" => OpType::Info,
        w => anyhow::bail!("line {line}: unknown op type {w:?}"),
    })
}

fn new_op(index: usize, process: u64, line: usize, kind: OpType, f: &str) -> Op {
    Op::new(index, process, line as u64, kind, f.trim_start_matches(':'))
}

/// Parses a Jepsen etcd register log (`:read`, `:write V`, `:cas [from to]`).
/// A keyword value such as `:timed-out` becomes the op's `error`.
pub fn parse_etcd_log(text: &str) -> anyhow::Result<Vec<Op>> {
    let mut ops = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line_no = n + 1;
        if line.trim().is_empty() {
            continue;
        }
        let rest = line
            .split_once(" - ")
            .map(|(_, r)| r)
            .ok_or_else(|| anyhow::anyhow!("line {line_no}: no ` - ` separator: {line:?}"))?;
        let mut words = rest.split_whitespace();
        let (Some(process), Some(kind), Some(f)) = (words.next(), words.next(), words.next())
        else {
            anyhow::bail!("line {line_no}: expected `process type f value`: {line:?}");
        };
        let process: u64 = process
            .parse()
            .map_err(|e| anyhow::anyhow!("line {line_no}: process {process:?}: {e}"))?;
        let value_text = words.collect::<Vec<_>>().join(" ");
        let mut op = new_op(ops.len(), process, line_no, op_type(kind, line_no)?, f);
        let v = value_text.as_str();
        if v.is_empty() || v == "nil" {
        } else if let Some(kw) = v.strip_prefix(':') {
            op.error = Some(kw.to_string());
        } else if let Some(inner) = v.strip_prefix('[').and_then(|v| v.strip_suffix(']')) {
            let items = inner
                .split_whitespace()
                .map(|x| {
                    x.parse::<i64>()
                        .map(Value::from)
                        .map_err(|e| anyhow::anyhow!("line {line_no}: {x:?}: {e}"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            op.value = Value::Array(items);
        } else {
            op.value = Value::from(
                v.parse::<i64>()
                    .map_err(|e| anyhow::anyhow!("line {line_no}: value {v:?}: {e}"))?,
            );
        }
        ops.push(op);
    }
    Ok(ops)
}

/// A tiny reader for the flat EDN maps of the kv histories: keyword keys,
/// values that are strings, integers, `nil` or keywords.
struct Edn<'a> {
    s: &'a [u8],
    pos: usize,
    line: usize,
}

impl Edn<'_> {
    fn skip_space(&mut self) {
        while self
            .s
            .get(self.pos)
            .is_some_and(|c| c.is_ascii_whitespace() || *c == b',')
        {
            self.pos += 1;
        }
    }

    fn expect(&mut self, c: u8) -> anyhow::Result<()> {
        self.skip_space();
        if self.s.get(self.pos) != Some(&c) {
            anyhow::bail!(
                "line {}: expected {:?} at column {}",
                self.line,
                c as char,
                self.pos + 1
            );
        }
        self.pos += 1;
        Ok(())
    }

    fn token(&mut self) -> &str {
        let start = self.pos;
        while self
            .s
            .get(self.pos)
            .is_some_and(|c| !c.is_ascii_whitespace() && !matches!(c, b',' | b'}'))
        {
            self.pos += 1;
        }
        std::str::from_utf8(&self.s[start..self.pos]).unwrap_or("")
    }

    fn string(&mut self) -> anyhow::Result<String> {
        self.expect(b'"')?;
        let mut out = Vec::new();
        loop {
            let Some(&c) = self.s.get(self.pos) else {
                anyhow::bail!("line {}: unterminated string", self.line);
            };
            self.pos += 1;
            match c {
                b'"' => break,
                b'\\' => {
                    let Some(&e) = self.s.get(self.pos) else {
                        anyhow::bail!("line {}: unterminated escape", self.line);
                    };
                    self.pos += 1;
                    out.push(match e {
                        b'n' => b'\n',
                        b't' => b'\t',
                        b'r' => b'\r',
                        other => other,
                    });
                }
                c => out.push(c),
            }
        }
        Ok(String::from_utf8(out)?)
    }

    /// Reads the map as (keyword, value) pairs; keywords stay as `:name`
    /// strings.
    fn map(&mut self) -> anyhow::Result<Vec<(String, Value)>> {
        self.expect(b'{')?;
        let mut out = Vec::new();
        loop {
            self.skip_space();
            match self.s.get(self.pos) {
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some(b':') => {}
                _ => anyhow::bail!(
                    "line {}: expected a keyword at column {}",
                    self.line,
                    self.pos + 1
                ),
            }
            let key = self.token().trim_start_matches(':').to_string();
            self.skip_space();
            let value = if self.s.get(self.pos) == Some(&b'"') {
                Value::String(self.string()?)
            } else {
                let line = self.line;
                let t = self.token();
                if t == "nil" {
                    Value::Null
                } else if let Ok(i) = t.parse::<i64>() {
                    Value::from(i)
                } else if t.starts_with(':') {
                    Value::String(t.to_string())
                } else {
                    anyhow::bail!("line {}: unsupported value {t:?}", line);
                }
            };
            out.push((key, value));
        }
    }
}

/// Parses a Porcupine kv history (`:get`, `:put`, `:append` with string
/// keys and values).
pub fn parse_kv(text: &str) -> anyhow::Result<Vec<Op>> {
    let mut ops = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line_no = n + 1;
        if line.trim().is_empty() {
            continue;
        }
        let mut edn = Edn {
            s: line.as_bytes(),
            pos: 0,
            line: line_no,
        };
        let mut process = None;
        let mut kind = None;
        let mut f = None;
        let mut key = None;
        let mut value = Value::Null;
        for (k, v) in edn.map()? {
            match (k.as_str(), v) {
                ("process", v) => process = v.as_u64(),
                ("type", Value::String(t)) => kind = Some(op_type(&t, line_no)?),
                ("f", Value::String(t)) => f = Some(t),
                ("key", Value::String(t)) => key = Some(t),
                ("value", v) => value = v,
                (k, v) => anyhow::bail!("line {line_no}: unexpected field :{k} {v}"),
            }
        }
        let (Some(process), Some(kind), Some(f)) = (process, kind, f) else {
            anyhow::bail!("line {line_no}: missing :process, :type or :f");
        };
        let mut op = new_op(ops.len(), process, line_no, kind, &f);
        op.key = key;
        op.value = value;
        ops.push(op);
    }
    Ok(ops)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_log_lines_parse_with_tabs_or_spaces() {
        let text = "INFO  jepsen.util - 2\t:invoke\t:cas\t[3 0]\n\
                    INFO  jepsen.util - 7   :ok     :read   nil\n\
                    INFO  jepsen.util - 4\t:info\t:write\t:timed-out\n\
                    INFO  jepsen.util - 0\t:ok\t:read\t3\n";
        let ops = parse_etcd_log(text).unwrap();
        assert_eq!(ops.len(), 4);
        assert_eq!(
            (ops[0].process, ops[0].kind, ops[0].f.as_str()),
            (2, OpType::Invoke, "cas")
        );
        assert_eq!(ops[0].value, serde_json::json!([3, 0]));
        assert_eq!(ops[1].value, Value::Null);
        assert_eq!(ops[2].error.as_deref(), Some("timed-out"));
        assert_eq!(ops[3].value, serde_json::json!(3));
        assert_eq!(ops[3].time, 4);
        assert!(parse_etcd_log("INFO  jepsen.util - x\t:ok\t:read\t3").is_err());
    }

    #[test]
    fn kv_maps_parse_strings_with_spaces_and_escapes() {
        let text = "{:process 3, :type :ok, :f :get, :key \"5\", :value \"x 0 \\\"1 y\"}\n\
                    {:process 0, :type :invoke, :f :get, :key \"5\", :value nil}\n";
        let ops = parse_kv(text).unwrap();
        assert_eq!(ops[0].process, 3);
        assert_eq!(ops[0].kind, OpType::Ok);
        assert_eq!(ops[0].f, "get");
        assert_eq!(ops[0].key.as_deref(), Some("5"));
        assert_eq!(ops[0].value, serde_json::json!("x 0 \"1 y"));
        assert_eq!(ops[1].value, Value::Null);
        assert!(parse_kv("{:process 0, :type :bogus, :f :get}").is_err());
    }
}
