//! Root device hints: parsing `node.properties.root_device` and choosing a disk.
//!
//! Semantics follow IPA `ironic_python_agent/device_hints.py` (formerly
//! ironic-lib `utils.py`) and oslo.utils `specs_matcher`:
//! - Fields and types: `size` (int, GiB), `rotational` (bool), and the strings
//!   `model`, `vendor`, `serial`, `wwn`, `wwn_with_extension`,
//!   `wwn_vendor_extension`, `name`, `hctl`, `by_path`, `tran`.
//! - An expression is `[op] value` or `<or> v1 <or> v2 …`. Operators:
//!   numeric `==`, `!=`, `>=`, `<=`, `>`, `<` (and oslo's legacy `=`, meaning
//!   `>=`), string `s==`, `s!=`, `s>=`, `s<=`, `s>`, `s<`, substring `<in>`
//!   and `<or>`. Without an operator ints use `==`, strings `s==`.
//! - Strings, on both sides, are trimmed, lowercased and URL-quoted (spaces
//!   become `%20`), so `"Big  Disk "` matches model `big  disk`.
//! - `size` compares the device size in GiB as a real number (a 10.5 GiB disk
//!   does not match `10`). `rotational` accepts oslo's boolean strings.
//! - The first device, in the order given, that satisfies every hint wins.
//!
//! Deliberate differences, each safer than IPA's behaviour:
//! - `name` may omit `/dev/` (IPA needs the full path); `<in>` is left as given.
//! - A device lacking a string attribute never matches a hint on it (IPA
//!   compares against the string `"none"`, so `serial: "s!= x"` would pick a
//!   disk without a serial).
//! - `size` with string operators or `<in>` is rejected when parsing (IPA
//!   accepts them and then never matches, or crashes); `size` with `<or>`
//!   compares numerically (IPA compares a float to a string: never true).
//! - A numeric operator on a string field whose device value is not a number
//!   does not match (IPA raises, depending on device order).
//! - `<all-in>` is rejected: it applies to lists, and no hint is a list.

use std::fmt;

use serde_json::Value;

use crate::block::{default_root_device, BlockDevice, MIN_ROOT_DEVICE_SIZE};

/// Why hints could not be parsed, or no device satisfied them.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HintError {
    /// `root_device` is neither an object nor null.
    #[error("root device hints must be a JSON object, got {got}")]
    NotAnObject {
        /// The value received, as JSON.
        got: String,
    },
    /// Keys that are not hint names.
    #[error("the hints \"{invalid}\" are invalid; valid hints are: \"{valid}\"")]
    UnknownHints {
        /// The unknown keys, comma separated.
        invalid: String,
        /// All valid hint names, comma separated.
        valid: String,
    },
    /// A hint whose expression is blank.
    #[error("root device hint \"{hint}\" expression is empty")]
    Empty {
        /// The hint name.
        hint: String,
    },
    /// A string hint given as another JSON type.
    #[error("root device hint \"{hint}\" is not a string value; hint expression: {value}")]
    NotString {
        /// The hint name.
        hint: String,
        /// The value received, as JSON.
        value: String,
    },
    /// `size` (or a numeric operator's operand) that is not a number.
    #[error("root device hint \"{hint}\" is not {expected} value; current value: {value}")]
    NotNumber {
        /// The hint name.
        hint: String,
        /// "an integer" or "a numeric".
        expected: &'static str,
        /// The expression received.
        value: String,
    },
    /// `size` not above zero.
    #[error("root device hint \"{hint}\" should be a positive integer; current value: {value}")]
    NotPositive {
        /// The hint name.
        hint: String,
        /// The expression received.
        value: String,
    },
    /// `rotational` that is not a boolean.
    #[error("root device hint \"{hint}\" is not a Boolean value; current value: {value}")]
    NotBoolean {
        /// The hint name.
        hint: String,
        /// The value received, as JSON.
        value: String,
    },
    /// An operator that cannot apply to this hint, or an operator with no operand.
    #[error("root device hint \"{hint}\": {reason}; hint expression: {value}")]
    BadOperator {
        /// The hint name.
        hint: String,
        /// What is wrong.
        reason: String,
        /// The expression received.
        value: String,
    },
    /// No device satisfied every hint.
    #[error("no disk matches the root device hints {hints}; disks seen: {disks}")]
    NoMatch {
        /// The hints as given (JSON), or a description of the default rule.
        hints: String,
        /// Every candidate: name, size, serial, wwn, model.
        disks: String,
    },
}

/// The hint names, in IPA's `VALID_ROOT_DEVICE_HINTS` order.
const FIELDS: [Field; 12] = [
    Field::Size,
    Field::Model,
    Field::Wwn,
    Field::Serial,
    Field::Vendor,
    Field::WwnWithExtension,
    Field::WwnVendorExtension,
    Field::Name,
    Field::Rotational,
    Field::Hctl,
    Field::ByPath,
    Field::Tran,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Size,
    Model,
    Wwn,
    Serial,
    Vendor,
    WwnWithExtension,
    WwnVendorExtension,
    Name,
    Rotational,
    Hctl,
    ByPath,
    Tran,
}

impl Field {
    fn as_str(self) -> &'static str {
        match self {
            Field::Size => "size",
            Field::Model => "model",
            Field::Wwn => "wwn",
            Field::Serial => "serial",
            Field::Vendor => "vendor",
            Field::WwnWithExtension => "wwn_with_extension",
            Field::WwnVendorExtension => "wwn_vendor_extension",
            Field::Name => "name",
            Field::Rotational => "rotational",
            Field::Hctl => "hctl",
            Field::ByPath => "by_path",
            Field::Tran => "tran",
        }
    }

    fn device_string(self, dev: &BlockDevice) -> Option<&str> {
        match self {
            Field::Model => Some(dev.model.as_str()),
            Field::Wwn => dev.wwn.as_deref(),
            Field::Serial => dev.serial.as_deref(),
            Field::Vendor => dev.vendor.as_deref(),
            Field::WwnWithExtension => dev.wwn_with_extension.as_deref(),
            Field::WwnVendorExtension => dev.wwn_vendor_extension.as_deref(),
            Field::Name => Some(dev.name.as_str()),
            Field::Hctl => dev.hctl.as_deref(),
            Field::ByPath => dev.by_path.as_deref(),
            Field::Tran => dev.tran.as_deref(),
            Field::Size | Field::Rotational => None,
        }
    }
}

/// oslo.utils `specs_matcher` operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    NumEq,
    NumNe,
    NumGe,
    NumLe,
    NumGt,
    NumLt,
    StrEq,
    StrNe,
    StrGe,
    StrLe,
    StrGt,
    StrLt,
    In,
    Or,
}

impl Op {
    fn is_numeric(self) -> bool {
        matches!(
            self,
            Op::NumEq | Op::NumNe | Op::NumGe | Op::NumLe | Op::NumGt | Op::NumLt
        )
    }
}

/// Operator spellings, longest first where one is a prefix of another
/// (oslo's grammar orders its literals for the same reason). `=` is oslo's
/// legacy spelling of `>=`.
const OPS: [(&str, Op); 15] = [
    ("<or>", Op::Or),
    ("<in>", Op::In),
    ("s==", Op::StrEq),
    ("s!=", Op::StrNe),
    ("s<=", Op::StrLe),
    ("s<", Op::StrLt),
    ("s>=", Op::StrGe),
    ("s>", Op::StrGt),
    ("==", Op::NumEq),
    ("!=", Op::NumNe),
    (">=", Op::NumGe),
    ("<=", Op::NumLe),
    (">", Op::NumGt),
    ("<", Op::NumLt),
    ("=", Op::NumGe),
];

#[derive(Debug, Clone, PartialEq)]
enum Matcher {
    Bool(bool),
    Str { op: Op, values: Vec<String> },
    Num { op: Op, values: Vec<f64> },
}

#[derive(Debug, Clone, PartialEq)]
struct Hint {
    field: Field,
    matcher: Matcher,
}

/// Parsed, validated root device hints.
#[derive(Debug, Clone, PartialEq)]
pub struct RootDeviceHints {
    hints: Vec<Hint>,
    /// The hints as received, compact JSON, for messages.
    source: String,
}

impl RootDeviceHints {
    /// True when no hint was given (IPA then guesses the root disk).
    pub fn is_empty(&self) -> bool {
        self.hints.is_empty()
    }

    /// Whether `dev` satisfies every hint.
    pub fn matches(&self, dev: &BlockDevice) -> bool {
        self.hints.iter().all(|h| h.matches(dev))
    }
}

impl fmt::Display for RootDeviceHints {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// Parses `node.properties.root_device` (or `instance_info.root_device`).
///
/// `null`, `{}` and `""` mean "no hints" (IPA: `if not root_device`).
pub fn parse(v: &Value) -> Result<RootDeviceHints, HintError> {
    let empty = RootDeviceHints {
        hints: Vec::new(),
        source: "{}".to_string(),
    };
    let obj = match v {
        Value::Null => return Ok(empty),
        Value::String(s) if s.is_empty() => return Ok(empty),
        Value::Object(o) => o,
        other => {
            return Err(HintError::NotAnObject {
                got: other.to_string(),
            })
        }
    };
    let mut invalid: Vec<&str> = obj
        .keys()
        .map(String::as_str)
        .filter(|k| !FIELDS.iter().any(|f| f.as_str() == *k))
        .collect();
    if !invalid.is_empty() {
        invalid.sort_unstable();
        let valid: Vec<&str> = FIELDS.iter().map(|f| f.as_str()).collect();
        return Err(HintError::UnknownHints {
            invalid: invalid.join(", "),
            valid: valid.join(", "),
        });
    }
    let mut hints = Vec::with_capacity(obj.len());
    for field in FIELDS {
        if let Some(value) = obj.get(field.as_str()) {
            hints.push(Hint {
                field,
                matcher: parse_one(field, value)?,
            });
        }
    }
    Ok(RootDeviceHints {
        hints,
        source: v.to_string(),
    })
}

/// Picks the install device: the first device of `devs` satisfying `hints`.
///
/// With empty hints, IPA's default rule applies ([`default_root_device`]).
/// Callers pass the devices they consider candidates, in their order (IPA
/// uses its inventory order, which is Ferric's name order).
pub fn select<'a>(
    devs: &'a [BlockDevice],
    hints: &RootDeviceHints,
) -> Result<&'a BlockDevice, HintError> {
    let found = if hints.is_empty() {
        default_root_device(devs)
    } else {
        devs.iter().find(|d| hints.matches(d))
    };
    found.ok_or_else(|| HintError::NoMatch {
        hints: if hints.is_empty() {
            format!(
                "(none given: the smallest non-removable, writable disk of at least {} GiB)",
                MIN_ROOT_DEVICE_SIZE >> 30
            )
        } else {
            hints.source.clone()
        },
        disks: describe_disks(devs),
    })
}

fn describe_disks(devs: &[BlockDevice]) -> String {
    if devs.is_empty() {
        return "none".to_string();
    }
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_string());
    devs.iter()
        .map(|d| {
            format!(
                "{} (size {} bytes, serial {}, wwn {}, model {:?})",
                d.name,
                d.size,
                opt(&d.serial),
                opt(&d.wwn),
                d.model
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn parse_one(field: Field, value: &Value) -> Result<Matcher, HintError> {
    let hint = field.as_str().to_string();
    match field {
        Field::Rotational => {
            parse_bool(value)
                .map(Matcher::Bool)
                .ok_or_else(|| HintError::NotBoolean {
                    hint,
                    value: value.to_string(),
                })
        }
        Field::Size => {
            // IPA applies str() to the value: JSON integers and strings work,
            // 10.0 or true do not.
            let text = match value {
                Value::String(s) => s.clone(),
                Value::Number(n) if n.is_i64() || n.is_u64() => n.to_string(),
                other => other.to_string(),
            };
            let (op, values) = split_expression(field, &text)?;
            let op = op.unwrap_or(Op::NumEq);
            if !(op.is_numeric() || op == Op::Or) {
                return Err(HintError::BadOperator {
                    hint,
                    reason: "size takes a numeric operator (==, !=, >=, <=, >, <) or <or>"
                        .to_string(),
                    value: text,
                });
            }
            let mut nums = Vec::with_capacity(values.len());
            for v in &values {
                let n = parse_python_int(v).ok_or_else(|| HintError::NotNumber {
                    hint: hint.clone(),
                    expected: "an integer",
                    value: text.clone(),
                })?;
                if n <= 0 {
                    return Err(HintError::NotPositive {
                        hint: hint.clone(),
                        value: text.clone(),
                    });
                }
                nums.push(n as f64);
            }
            Ok(Matcher::Num { op, values: nums })
        }
        _ => {
            let Value::String(text) = value else {
                return Err(HintError::NotString {
                    hint,
                    value: value.to_string(),
                });
            };
            let (op, mut values) = split_expression(field, text)?;
            let op = op.unwrap_or(Op::StrEq);
            if field == Field::Name && op != Op::In {
                for v in &mut values {
                    if !v.starts_with("/dev/") {
                        *v = format!("/dev/{v}");
                    }
                }
            }
            let values: Vec<String> = values.iter().map(|v| quote(v)).collect();
            if op.is_numeric() {
                let mut nums = Vec::with_capacity(values.len());
                for v in &values {
                    nums.push(v.parse::<f64>().map_err(|_| HintError::NotNumber {
                        hint: hint.clone(),
                        expected: "a numeric",
                        value: text.clone(),
                    })?);
                }
                return Ok(Matcher::Num { op, values: nums });
            }
            Ok(Matcher::Str { op, values })
        }
    }
}

/// Splits `[op] value` / `<or> a <or> b` after trimming and lowercasing,
/// like IPA's `_extract_hint_operator_and_values`.
fn split_expression(field: Field, text: &str) -> Result<(Option<Op>, Vec<String>), HintError> {
    let hint = field.as_str().to_string();
    let expr = text.trim().to_lowercase();
    if expr.is_empty() {
        return Err(HintError::Empty { hint });
    }
    if expr.starts_with("<all-in>") {
        return Err(HintError::BadOperator {
            hint,
            reason: "<all-in> applies to lists and no hint is a list".to_string(),
            value: text.to_string(),
        });
    }
    let Some(&(spelling, op)) = OPS.iter().find(|(s, _)| expr.starts_with(s)) else {
        return Ok((None, vec![expr]));
    };
    // IPA splits on every occurrence of the operator and drops empty pieces.
    let mut values: Vec<String> = expr
        .split(spelling)
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect();
    if values.is_empty() {
        return Err(HintError::BadOperator {
            hint,
            reason: format!("operator {spelling} has no value"),
            value: text.to_string(),
        });
    }
    if op != Op::Or {
        // specs_matcher parses one operand after a unary operator.
        values.truncate(1);
    }
    Ok((Some(op), values))
}

/// Python `int()` on a string: optional sign, ASCII digits, `_` between digits.
fn parse_python_int(s: &str) -> Option<i64> {
    let s = s.trim();
    let (neg, digits) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    if digits.is_empty()
        || digits.starts_with('_')
        || digits.ends_with('_')
        || digits.contains("__")
        || !digits.bytes().all(|b| b.is_ascii_digit() || b == b'_')
    {
        return None;
    }
    let n: i64 = digits.replace('_', "").parse().ok()?;
    Some(if neg { -n } else { n })
}

/// oslo `strutils.bool_from_string(strict=True)`.
fn parse_bool(v: &Value) -> Option<bool> {
    let text = match v {
        Value::Bool(b) => return Some(*b),
        Value::String(s) => s.trim().to_lowercase(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    match text.as_str() {
        "1" | "t" | "true" | "on" | "y" | "yes" => Some(true),
        "0" | "f" | "false" | "off" | "n" | "no" => Some(false),
        _ => None,
    }
}

/// Python `urllib.parse.quote(s)` (safe characters: ASCII alphanumerics, `_.-~/`).
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"_.-~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A device's string attribute as IPA normalises it; `None` when absent or blank.
fn normalise_device_value(v: &str) -> Option<String> {
    let v = v.trim().to_lowercase();
    (!v.is_empty()).then(|| quote(&v))
}

impl Hint {
    fn matches(&self, dev: &BlockDevice) -> bool {
        match &self.matcher {
            Matcher::Bool(b) => self.field == Field::Rotational && dev.rotational == *b,
            Matcher::Num { op, values } => {
                let actual = if self.field == Field::Size {
                    dev.size as f64 / (1u64 << 30) as f64
                } else {
                    match self
                        .field
                        .device_string(dev)
                        .and_then(normalise_device_value)
                        .and_then(|v| v.parse::<f64>().ok())
                    {
                        Some(n) => n,
                        None => return false,
                    }
                };
                compare_num(*op, actual, values)
            }
            Matcher::Str { op, values } => {
                let Some(actual) = self
                    .field
                    .device_string(dev)
                    .and_then(normalise_device_value)
                else {
                    log::debug!(
                        "{} has no {}: it cannot match a hint on it",
                        dev.name,
                        self.field.as_str()
                    );
                    return false;
                };
                let Some(first) = values.first().map(String::as_str) else {
                    return false;
                };
                match op {
                    Op::StrEq => actual == first,
                    Op::StrNe => actual != first,
                    Op::StrGe => actual.as_str() >= first,
                    Op::StrLe => actual.as_str() <= first,
                    Op::StrGt => actual.as_str() > first,
                    Op::StrLt => actual.as_str() < first,
                    Op::In => actual.contains(first),
                    Op::Or => values.contains(&actual),
                    _ => false,
                }
            }
        }
    }
}

fn compare_num(op: Op, actual: f64, values: &[f64]) -> bool {
    // Parsing guarantees at least one operand.
    let Some(&first) = values.first() else {
        return false;
    };
    match op {
        Op::NumEq => actual == first,
        Op::NumNe => actual != first,
        Op::NumGe => actual >= first,
        Op::NumLe => actual <= first,
        Op::NumGt => actual > first,
        Op::NumLt => actual < first,
        Op::Or => values.contains(&actual),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_matches_python() {
        assert_eq!(quote("big disk"), "big%20disk");
        assert_eq!(quote("0:0:0:0"), "0%3A0%3A0%3A0");
        assert_eq!(quote("/dev/sda"), "/dev/sda");
        assert_eq!(quote("é"), "%C3%A9");
    }

    #[test]
    fn python_int() {
        assert_eq!(parse_python_int(" 10 "), Some(10));
        assert_eq!(parse_python_int("+1_000"), Some(1000));
        assert_eq!(parse_python_int("-3"), Some(-3));
        assert_eq!(parse_python_int("1.5"), None);
        assert_eq!(parse_python_int("_1"), None);
        assert_eq!(parse_python_int(""), None);
    }

    #[test]
    fn expression_split() {
        assert_eq!(
            split_expression(Field::Model, "  <OR> Foo Bar <or> baz ").unwrap(),
            (Some(Op::Or), vec!["foo bar".to_string(), "baz".to_string()])
        );
        assert_eq!(
            split_expression(Field::Model, "s==foo").unwrap(),
            (Some(Op::StrEq), vec!["foo".to_string()])
        );
        assert_eq!(
            split_expression(Field::Size, ">= 10").unwrap(),
            (Some(Op::NumGe), vec!["10".to_string()])
        );
        assert_eq!(
            split_expression(Field::Model, "abc==def").unwrap(),
            (None, vec!["abc==def".to_string()])
        );
        assert!(matches!(
            split_expression(Field::Model, "s== "),
            Err(HintError::BadOperator { .. })
        ));
    }
}
