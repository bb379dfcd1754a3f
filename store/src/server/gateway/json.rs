//! server::gateway::json: etcd's gateway JSON mapping, on reflected
//! messages. etcd 3.5's gateway decodes request bodies with golang/protobuf's
//! `jsonpb` (over Go's `encoding/json`) and encodes responses with `jsonpb`
//! `OrigName: true`; clients depend on both its leniency and its exact error
//! strings, so this module reproduces them rather than using serde:
//!
//! - decoding: fields by proto name or lowerCamel JSON name (exact case),
//!   unknown fields ignored, `null` leaves the default, 64-bit and other
//!   integers as numbers or quoted numbers, enums as names or numbers, bytes
//!   as standard padded base64; errors are Go's (`json: cannot unmarshal …
//!   into Go value of type …`, `illegal base64 data at input byte N`, the
//!   scanner's `invalid character … looking for beginning of value`, …).
//! - encoding: proto field names in declaration order, default values
//!   omitted, 64-bit integers as strings, enums by name, bytes as base64,
//!   strings escaped as Go's `encoding/json` does.
//!
//! It owns no I/O and knows nothing of services; `gateway` calls it.

use std::collections::HashMap;

use base64::Engine as _;
use prost_reflect::{
    DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, ReflectMessage, Value,
};

/// Why a body or a value could not be decoded; the string is Go's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

/// A parsed JSON value that remembers its source text (jsonpb re-parses raw
/// values, e.g. the inside of a quoted number).
#[derive(Debug, Clone)]
pub enum Json<'a> {
    /// `null`
    Null,
    /// `true` / `false`
    Bool(bool),
    /// A number literal, as written.
    Num(&'a str),
    /// A string: its decoded value and the raw text between the quotes.
    Str(String, &'a str),
    /// An array.
    Arr(Vec<Json<'a>>),
    /// An object, members in order (duplicates kept; the last wins on lookup).
    Obj(Vec<(String, Json<'a>)>),
}

impl Json<'_> {
    /// Go's name for the JSON kind in `cannot unmarshal <kind> into …`.
    fn kind(&self) -> &'static str {
        match self {
            Json::Null => "null",
            Json::Bool(_) => "bool",
            Json::Num(_) => "number",
            Json::Str(..) => "string",
            Json::Arr(_) => "array",
            Json::Obj(_) => "object",
        }
    }
}

/// A scanner failure: either the input ended inside a value, or a byte is
/// not allowed where it stands (Go's `invalid character …` context).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanError {
    /// The input ended before the value did.
    Eof,
    /// `invalid character <c> <context>`.
    Invalid(u8, &'static str),
}

impl ScanError {
    fn message(&self, eof: &str) -> String {
        match self {
            ScanError::Eof => eof.to_string(),
            ScanError::Invalid(c, ctx) => format!("invalid character {} {ctx}", quote_char(*c)),
        }
    }
}

/// Go's `quoteChar`.
fn quote_char(c: u8) -> String {
    match c {
        b'\'' => r"'\''".to_string(),
        b'"' => "'\"'".to_string(),
        c if (0x20..0x7f).contains(&c) => format!("'{}'", c as char),
        c => format!("'\\x{c:02x}'"),
    }
}

fn is_ws(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r')
}

struct Parser<'a> {
    s: &'a str,
    b: &'a [u8],
    i: usize,
}

impl<'a> Parser<'a> {
    fn ws(&mut self) {
        while self.i < self.b.len() && is_ws(self.b[self.i]) {
            self.i += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn value(&mut self) -> Result<Json<'a>, ScanError> {
        self.ws();
        let c = self.peek().ok_or(ScanError::Eof)?;
        match c {
            b'{' => self.object(),
            b'[' => self.array(),
            b'"' => {
                let (s, raw) = self.string("in string literal")?;
                Ok(Json::Str(s, raw))
            }
            b't' => self.literal("true", Json::Bool(true)),
            b'f' => self.literal("false", Json::Bool(false)),
            b'n' => self.literal("null", Json::Null),
            b'-' | b'0'..=b'9' => self.number(),
            c => Err(ScanError::Invalid(c, "looking for beginning of value")),
        }
    }

    fn literal(&mut self, word: &'static str, v: Json<'a>) -> Result<Json<'a>, ScanError> {
        let ctx: &'static str = match word {
            "true" => "in literal true (expecting ",
            "false" => "in literal false (expecting ",
            _ => "in literal null (expecting ",
        };
        for (k, want) in word.bytes().enumerate().skip(1) {
            let c = *self.b.get(self.i + k).ok_or(ScanError::Eof)?;
            if c != want {
                // Go: "in literal true (expecting 'r')"; leak-free static by table.
                let ctx = literal_ctx(ctx, want);
                return Err(ScanError::Invalid(c, ctx));
            }
        }
        self.i += word.len();
        Ok(v)
    }

    fn number(&mut self) -> Result<Json<'a>, ScanError> {
        let start = self.i;
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek() {
            None => return Err(ScanError::Eof),
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                while matches!(self.peek(), Some(b'0'..=b'9')) {
                    self.i += 1;
                }
            }
            Some(c) => return Err(ScanError::Invalid(c, "in numeric literal")),
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            match self.peek() {
                None => return Err(ScanError::Eof),
                Some(b'0'..=b'9') => {}
                Some(c) => {
                    return Err(ScanError::Invalid(
                        c,
                        "after decimal point in numeric literal",
                    ))
                }
            }
            while matches!(self.peek(), Some(b'0'..=b'9')) {
                self.i += 1;
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            match self.peek() {
                None => return Err(ScanError::Eof),
                Some(b'0'..=b'9') => {}
                Some(c) => return Err(ScanError::Invalid(c, "in exponent of numeric literal")),
            }
            while matches!(self.peek(), Some(b'0'..=b'9')) {
                self.i += 1;
            }
        }
        Ok(Json::Num(&self.s[start..self.i]))
    }

    /// A string starting at the opening quote: (decoded, raw inner text).
    fn string(&mut self, ctx: &'static str) -> Result<(String, &'a str), ScanError> {
        self.i += 1;
        let start = self.i;
        let mut out = String::new();
        loop {
            let c = self.peek().ok_or(ScanError::Eof)?;
            match c {
                b'"' => {
                    let raw = &self.s[start..self.i];
                    self.i += 1;
                    return Ok((out, raw));
                }
                b'\\' => {
                    self.i += 1;
                    let e = self.peek().ok_or(ScanError::Eof)?;
                    self.i += 1;
                    match e {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let mut cp = self.hex4()?;
                            if (0xd800..0xdc00).contains(&cp)
                                && self.b.get(self.i) == Some(&b'\\')
                                && self.b.get(self.i + 1) == Some(&b'u')
                            {
                                let save = self.i;
                                self.i += 2;
                                let lo = self.hex4()?;
                                if (0xdc00..0xe000).contains(&lo) {
                                    cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                                } else {
                                    self.i = save;
                                }
                            }
                            out.push(char::from_u32(cp).unwrap_or('\u{fffd}'));
                        }
                        c => return Err(ScanError::Invalid(c, "in string escape code")),
                    }
                }
                c if c < 0x20 => return Err(ScanError::Invalid(c, ctx)),
                _ => {
                    // Copy one UTF-8 character (the input is a &str).
                    let ch = self.s[self.i..]
                        .chars()
                        .next()
                        .expect("invariant: in bounds");
                    out.push(ch);
                    self.i += ch.len_utf8();
                }
            }
        }
    }

    fn hex4(&mut self) -> Result<u32, ScanError> {
        let mut v = 0u32;
        for _ in 0..4 {
            let c = self.peek().ok_or(ScanError::Eof)?;
            let d = (c as char)
                .to_digit(16)
                .ok_or(ScanError::Invalid(c, "in \\u hexadecimal character escape"))?;
            v = v * 16 + d;
            self.i += 1;
        }
        Ok(v)
    }

    fn object(&mut self) -> Result<Json<'a>, ScanError> {
        self.i += 1;
        let mut members = Vec::new();
        self.ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok(Json::Obj(members));
        }
        loop {
            self.ws();
            match self.peek() {
                None => return Err(ScanError::Eof),
                Some(b'"') => {}
                Some(c) => {
                    return Err(ScanError::Invalid(
                        c,
                        "looking for beginning of object key string",
                    ))
                }
            }
            let (k, _) = self.string("in string literal")?;
            self.ws();
            match self.peek() {
                None => return Err(ScanError::Eof),
                Some(b':') => self.i += 1,
                Some(c) => return Err(ScanError::Invalid(c, "after object key")),
            }
            let v = self.value()?;
            members.push((k, v));
            self.ws();
            match self.peek() {
                None => return Err(ScanError::Eof),
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Ok(Json::Obj(members));
                }
                Some(c) => return Err(ScanError::Invalid(c, "after object key:value pair")),
            }
        }
    }

    fn array(&mut self) -> Result<Json<'a>, ScanError> {
        self.i += 1;
        let mut items = Vec::new();
        self.ws();
        if self.peek() == Some(b']') {
            self.i += 1;
            return Ok(Json::Arr(items));
        }
        loop {
            items.push(self.value()?);
            self.ws();
            match self.peek() {
                None => return Err(ScanError::Eof),
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    return Ok(Json::Arr(items));
                }
                Some(c) => return Err(ScanError::Invalid(c, "after array element")),
            }
        }
    }
}

fn literal_ctx(prefix: &'static str, want: u8) -> &'static str {
    // Go's messages name the expected byte; all are known statically.
    match (prefix, want) {
        ("in literal true (expecting ", b'r') => "in literal true (expecting 'r')",
        ("in literal true (expecting ", b'u') => "in literal true (expecting 'u')",
        ("in literal true (expecting ", _) => "in literal true (expecting 'e')",
        ("in literal false (expecting ", b'a') => "in literal false (expecting 'a')",
        ("in literal false (expecting ", b'l') => "in literal false (expecting 'l')",
        ("in literal false (expecting ", b's') => "in literal false (expecting 's')",
        ("in literal false (expecting ", _) => "in literal false (expecting 'e')",
        (_, b'u') => "in literal null (expecting 'u')",
        _ => "in literal null (expecting 'l')",
    }
}

/// Go's `json.Unmarshal` syntax check: exactly one value, then only space.
fn unmarshal_text(s: &str) -> Result<Json<'_>, DecodeError> {
    let mut p = Parser {
        s,
        b: s.as_bytes(),
        i: 0,
    };
    let v = p
        .value()
        .map_err(|e| DecodeError(e.message("unexpected end of JSON input")))?;
    p.ws();
    if let Some(c) = p.peek() {
        return Err(DecodeError(
            ScanError::Invalid(c, "after top-level value").message(""),
        ));
    }
    Ok(v)
}

/// What [`next_value`] found at the front of a buffer.
#[derive(Debug)]
pub enum Next<'a> {
    /// Nothing but whitespace (Go's `io.EOF`).
    End,
    /// A complete value and the number of bytes it (and leading space) used.
    Value(Json<'a>, usize),
    /// The buffer ends inside a value: more input may complete it.
    Partial,
}

/// Read one JSON value from the front of `s`, as Go's `json.Decoder.Decode`
/// does (trailing input is left for the next call).
pub fn next_value(s: &str) -> Result<Next<'_>, DecodeError> {
    let mut p = Parser {
        s,
        b: s.as_bytes(),
        i: 0,
    };
    p.ws();
    if p.peek().is_none() {
        return Ok(Next::End);
    }
    match p.value() {
        Ok(v) => Ok(Next::Value(v, p.i)),
        Err(ScanError::Eof) => Ok(Next::Partial),
        Err(e) => Err(DecodeError(e.message("unexpected EOF"))),
    }
}

/// Decode a whole request body into a message of type `desc`: the first JSON
/// value counts, an empty body is the empty message.
pub fn decode_body(desc: &MessageDescriptor, body: &[u8]) -> Result<DynamicMessage, DecodeError> {
    let s = String::from_utf8_lossy(body);
    match next_value(&s)? {
        Next::End => Ok(DynamicMessage::new(desc.clone())),
        Next::Partial => Err(DecodeError("unexpected EOF".into())),
        Next::Value(v, _) => decode_message(desc, &v),
    }
}

fn type_err(kind: &str, go_type: &str) -> DecodeError {
    DecodeError(format!(
        "json: cannot unmarshal {kind} into Go value of type {go_type}"
    ))
}

/// jsonpb's message decoding: an object whose members name fields.
pub fn decode_message(
    desc: &MessageDescriptor,
    v: &Json<'_>,
) -> Result<DynamicMessage, DecodeError> {
    let mut msg = DynamicMessage::new(desc.clone());
    let members = match v {
        Json::Null => return Ok(msg),
        Json::Obj(m) => m,
        other => return Err(type_err(other.kind(), "map[string]json.RawMessage")),
    };
    let mut by_name: HashMap<&str, &Json<'_>> = HashMap::new();
    for (k, v) in members {
        by_name.insert(k.as_str(), v);
    }
    for fd in desc.fields() {
        let raw = by_name
            .get(fd.name())
            .or_else(|| by_name.get(fd.json_name()));
        let Some(raw) = raw else { continue };
        if matches!(raw, Json::Null) {
            continue;
        }
        let value = if fd.is_list() {
            let Json::Arr(items) = raw else {
                return Err(type_err(raw.kind(), "[]json.RawMessage"));
            };
            let mut out = Vec::with_capacity(items.len());
            for it in items {
                out.push(decode_singular(&fd, it)?);
            }
            Value::List(out)
        } else {
            decode_singular(&fd, raw)?
        };
        msg.set_field(&fd, value);
    }
    Ok(msg)
}

fn trim_quote<'a>(v: &Json<'a>) -> Result<Option<Json<'a>>, DecodeError> {
    match v {
        Json::Str(_, raw) => unmarshal_text(raw).map(Some),
        _ => Ok(None),
    }
}

fn decode_int(v: &Json<'_>, go_type: &str, signed: bool, bits: u32) -> Result<Value, DecodeError> {
    let inner = trim_quote(v)?;
    let v = inner.as_ref().unwrap_or(v);
    let lit = match v {
        Json::Null => "0",
        Json::Num(n) => n,
        other => return Err(type_err(other.kind(), go_type)),
    };
    let bad = || type_err(&format!("number {lit}"), go_type);
    Ok(match (signed, bits) {
        (true, 64) => Value::I64(lit.parse::<i64>().map_err(|_| bad())?),
        (true, _) => Value::I32(lit.parse::<i32>().map_err(|_| bad())?),
        (false, 64) => Value::U64(lit.parse::<u64>().map_err(|_| bad())?),
        (false, _) => Value::U32(lit.parse::<u32>().map_err(|_| bad())?),
    })
}

fn decode_singular(fd: &FieldDescriptor, v: &Json<'_>) -> Result<Value, DecodeError> {
    match fd.kind() {
        Kind::Message(m) => Ok(Value::Message(decode_message(&m, v)?)),
        Kind::Enum(e) => {
            if let Json::Str(name, raw) = v {
                return match e.get_value_by_name(name) {
                    Some(ev) => Ok(Value::EnumNumber(ev.number())),
                    None => Err(DecodeError(format!(
                        "unknown value {} for enum {}",
                        go_quote(&format!("\"{raw}\"")),
                        e.full_name()
                    ))),
                };
            }
            const T: &str = "protoreflect.EnumNumber";
            match v {
                Json::Num(n) => n
                    .parse::<i32>()
                    .map(Value::EnumNumber)
                    .map_err(|_| type_err(&format!("number {n}"), T)),
                other => Err(type_err(other.kind(), T)),
            }
        }
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => decode_int(v, "int64", true, 64),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => decode_int(v, "int32", true, 32),
        Kind::Uint64 | Kind::Fixed64 => decode_int(v, "uint64", false, 64),
        Kind::Uint32 | Kind::Fixed32 => decode_int(v, "uint32", false, 32),
        Kind::Float | Kind::Double => {
            let inner = trim_quote(v)?;
            let v = inner.as_ref().unwrap_or(v);
            match v {
                Json::Num(n) => {
                    let f: f64 = n.parse().map_err(|_| type_err("number", "float64"))?;
                    Ok(if matches!(fd.kind(), Kind::Float) {
                        Value::F32(f as f32)
                    } else {
                        Value::F64(f)
                    })
                }
                other => Err(type_err(other.kind(), "float64")),
            }
        }
        Kind::Bool => match v {
            Json::Bool(b) => Ok(Value::Bool(*b)),
            other => Err(type_err(other.kind(), "bool")),
        },
        Kind::String => match v {
            Json::Str(s, _) => Ok(Value::String(s.clone())),
            other => Err(type_err(other.kind(), "string")),
        },
        Kind::Bytes => match v {
            Json::Str(s, _) => Ok(Value::Bytes(go_base64_decode(s.as_bytes())?.into())),
            other => Err(type_err(other.kind(), "[]uint8")),
        },
    }
}

/// Go's `base64.StdEncoding.Decode`, with its error positions.
pub fn go_base64_decode(src: &[u8]) -> Result<Vec<u8>, DecodeError> {
    fn val(c: u8) -> Option<u8> {
        match c {
            b'A'..=b'Z' => Some(c - b'A'),
            b'a'..=b'z' => Some(c - b'a' + 26),
            b'0'..=b'9' => Some(c - b'0' + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    }
    let corrupt = |at: usize| DecodeError(format!("illegal base64 data at input byte {at}"));
    let mut out = Vec::with_capacity(src.len() / 4 * 3);
    let mut si = 0usize;
    while si < src.len() {
        let mut dbuf = [0u8; 4];
        let mut dlen = 4;
        let mut j = 0usize;
        let mut err = None;
        while j < 4 {
            if si == src.len() {
                if j == 0 {
                    return Ok(out);
                }
                // Padding is required: a short final quantum is corrupt.
                return Err(corrupt(si - j));
            }
            let c = src[si];
            si += 1;
            if let Some(d) = val(c) {
                dbuf[j] = d;
                j += 1;
                continue;
            }
            if c == b'\n' || c == b'\r' {
                continue;
            }
            if c != b'=' {
                return Err(corrupt(si - 1));
            }
            match j {
                0 | 1 => return Err(corrupt(si - 1)),
                2 => {
                    while si < src.len() && (src[si] == b'\n' || src[si] == b'\r') {
                        si += 1;
                    }
                    if si == src.len() {
                        return Err(corrupt(src.len()));
                    }
                    if src[si] != b'=' {
                        return Err(corrupt(si - 1));
                    }
                    si += 1;
                }
                _ => {}
            }
            while si < src.len() && (src[si] == b'\n' || src[si] == b'\r') {
                si += 1;
            }
            if si < src.len() {
                err = Some(corrupt(si));
            }
            dlen = j;
            break;
        }
        let v = (dbuf[0] as u32) << 18
            | (dbuf[1] as u32) << 12
            | (dbuf[2] as u32) << 6
            | dbuf[3] as u32;
        let bytes = [(v >> 16) as u8, (v >> 8) as u8, v as u8];
        out.extend_from_slice(&bytes[..dlen - 1]);
        if let Some(e) = err {
            return Err(e);
        }
    }
    Ok(out)
}

/// Go's `%q` of a string (as jsonpb quotes a rejected enum value).
fn go_quote(s: &str) -> String {
    let mut out = String::from("\"");
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Append `s` as a JSON string, escaped as Go's `encoding/json` does (HTML
/// characters and U+2028/U+2029 as `\u` escapes).
pub fn push_str(out: &mut String, s: &str) {
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                out.push_str(&format!("\\u{:04x}", ch as u32))
            }
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Encode a message as jsonpb with `OrigName: true` and no defaults.
pub fn encode_message(out: &mut String, msg: &DynamicMessage) {
    out.push('{');
    let mut first = true;
    for fd in msg.descriptor().fields() {
        if !msg.has_field(&fd) {
            continue;
        }
        let v = msg.get_field(&fd);
        if let Value::List(items) = &*v {
            if items.is_empty() {
                continue;
            }
        }
        if !first {
            out.push(',');
        }
        first = false;
        push_str(out, fd.name());
        out.push(':');
        match &*v {
            Value::List(items) => {
                out.push('[');
                for (i, it) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    encode_value(out, &fd, it);
                }
                out.push(']');
            }
            v => encode_value(out, &fd, v),
        }
    }
    out.push('}');
}

fn encode_value(out: &mut String, fd: &FieldDescriptor, v: &Value) {
    match v {
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::I32(n) => out.push_str(&n.to_string()),
        Value::U32(n) => out.push_str(&n.to_string()),
        Value::I64(n) => {
            out.push('"');
            out.push_str(&n.to_string());
            out.push('"');
        }
        Value::U64(n) => {
            out.push('"');
            out.push_str(&n.to_string());
            out.push('"');
        }
        Value::F32(f) => out.push_str(&f.to_string()),
        Value::F64(f) => out.push_str(&f.to_string()),
        Value::String(s) => push_str(out, s),
        Value::Bytes(b) => {
            out.push('"');
            out.push_str(&base64::engine::general_purpose::STANDARD.encode(b));
            out.push('"');
        }
        Value::EnumNumber(n) => match fd.kind() {
            Kind::Enum(e) => match e.get_value(*n) {
                Some(ev) => push_str(out, ev.name()),
                None => out.push_str(&n.to_string()),
            },
            _ => out.push_str(&n.to_string()),
        },
        Value::Message(m) => encode_message(out, m),
        Value::List(_) | Value::Map(_) => out.push_str("null"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost_reflect::DescriptorPool;

    fn range_desc() -> MessageDescriptor {
        DescriptorPool::decode(proto::FILE_DESCRIPTOR_SET)
            .unwrap()
            .get_message_by_name("etcdserverpb.RangeRequest")
            .unwrap()
    }

    fn err(body: &str) -> String {
        decode_body(&range_desc(), body.as_bytes()).unwrap_err().0
    }

    #[test]
    fn go_error_strings() {
        assert_eq!(err(r#"{"key":"#), "unexpected EOF");
        assert_eq!(
            err("{x}"),
            "invalid character 'x' looking for beginning of object key string"
        );
        assert_eq!(
            err(r#"{"key" 1}"#),
            "invalid character '1' after object key"
        );
        assert_eq!(
            err(r#"{"key":"Zm9v" "a":1}"#),
            "invalid character '\"' after object key:value pair"
        );
        assert_eq!(
            err("[]"),
            "json: cannot unmarshal array into Go value of type map[string]json.RawMessage"
        );
        assert_eq!(
            err(r#"{"key":5}"#),
            "json: cannot unmarshal number into Go value of type []uint8"
        );
        assert_eq!(
            err(r#"{"key":"Zm9v!"}"#),
            "illegal base64 data at input byte 4"
        );
        assert_eq!(
            err(r#"{"key":"Zm9vYg"}"#),
            "illegal base64 data at input byte 4"
        );
        assert_eq!(
            err(r#"{"key":"Zm9"}"#),
            "illegal base64 data at input byte 0"
        );
        assert_eq!(
            err(r#"{"limit":"x"}"#),
            "invalid character 'x' looking for beginning of value"
        );
        assert_eq!(
            err(r#"{"limit":"1x"}"#),
            "invalid character 'x' after top-level value"
        );
        assert_eq!(err(r#"{"limit":""}"#), "unexpected end of JSON input");
        assert_eq!(
            err(r#"{"limit":1.5}"#),
            "json: cannot unmarshal number 1.5 into Go value of type int64"
        );
        assert_eq!(
            err(r#"{"limit":{}}"#),
            "json: cannot unmarshal object into Go value of type int64"
        );
        assert_eq!(
            err(r#"{"keys_only":"true"}"#),
            "json: cannot unmarshal string into Go value of type bool"
        );
        assert_eq!(
            err(r#"{"sort_order":"BOGUS"}"#),
            r#"unknown value "\"BOGUS\"" for enum etcdserverpb.RangeRequest.SortOrder"#
        );
        assert_eq!(
            err(r#"{"sort_order":1.5}"#),
            "json: cannot unmarshal number 1.5 into Go value of type protoreflect.EnumNumber"
        );
    }

    #[test]
    fn lenient_like_jsonpb() {
        let d = range_desc();
        let m = decode_body(&d, br#"{"key":"Zm9v","keysOnly":true,"limit":"3","sort_order":"DESCEND","bogus":1,"KEYS_ONLY":false} xx"#).unwrap();
        let r: proto::etcdserverpb::RangeRequest = m.transcode_to().unwrap();
        assert_eq!(r.key, b"foo");
        assert!(r.keys_only);
        assert_eq!(r.limit, 3);
        assert_eq!(r.sort_order, 2);
        let empty = decode_body(&d, b"").unwrap();
        assert_eq!(
            empty
                .transcode_to::<proto::etcdserverpb::RangeRequest>()
                .unwrap(),
            Default::default()
        );
        assert!(decode_body(&d, b"null").is_ok());
    }

    #[test]
    fn encodes_like_jsonpb() {
        let pool = DescriptorPool::decode(proto::FILE_DESCRIPTOR_SET).unwrap();
        let resp = proto::etcdserverpb::RangeResponse {
            header: Some(proto::etcdserverpb::ResponseHeader {
                revision: 2,
                ..Default::default()
            }),
            kvs: vec![proto::mvccpb::KeyValue {
                key: b"foo".to_vec(),
                version: 1,
                value: b"<&>".to_vec(),
                ..Default::default()
            }],
            count: 1,
            more: false,
        };
        let mut m = DynamicMessage::new(
            pool.get_message_by_name("etcdserverpb.RangeResponse")
                .unwrap(),
        );
        m.transcode_from(&resp).unwrap();
        let mut s = String::new();
        encode_message(&mut s, &m);
        assert_eq!(
            s,
            r#"{"header":{"revision":"2"},"kvs":[{"key":"Zm9v","version":"1","value":"PCY+"}],"count":"1"}"#
        );
        let mut e = String::new();
        push_str(&mut e, "a<b");
        assert_eq!(e, r#""a\u003cb""#);
    }
}
