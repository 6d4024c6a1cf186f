//! Reading typed values out of toml's spanned document tree, recording every problem with
//! its position instead of stopping at the first.
//!
//! Owns: the error sink and typed getters. Must never: know which keys a section has.

use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::error::{ConfigError, ErrorKind};
use crate::span::LineIndex;
use crate::suggest::did_you_mean;
use crate::units::parse_scaled;

/// A spanned value from the document.
pub(crate) type Val<'i> = Spanned<DeValue<'i>>;

/// Collects errors for one file.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub(crate) path: PathBuf,
    lines: LineIndex,
    pub(crate) errors: Vec<ConfigError>,
}

impl Ctx {
    pub(crate) fn new(path: &Path, text: &str) -> Self {
        Self {
            path: path.to_owned(),
            lines: LineIndex::new(text),
            errors: Vec::new(),
        }
    }

    /// 1-based (line, col) of a byte offset.
    pub(crate) fn line_col(&self, offset: usize) -> (usize, usize) {
        self.lines.line_col(offset)
    }

    pub(crate) fn error_at(
        &self,
        span: Range<usize>,
        kind: ErrorKind,
        message: String,
    ) -> ConfigError {
        let (line, col) = self.line_col(span.start);
        ConfigError {
            path: self.path.clone(),
            line,
            col,
            kind,
            message,
        }
    }

    pub(crate) fn err(&mut self, span: Range<usize>, kind: ErrorKind, message: String) {
        let e = self.error_at(span, kind, message);
        self.errors.push(e);
    }

    pub(crate) fn unknown_key(
        &mut self,
        key: &Spanned<std::borrow::Cow<'_, str>>,
        section: &str,
        allowed: &[&str],
    ) {
        let name = key.get_ref().as_ref();
        let hint = match crate::sections::home_of(name) {
            Some(home) => format!("`{name}` belongs in {home}; "),
            None => did_you_mean(name, allowed)
                .map(|s| format!("did you mean `{s}`? "))
                .unwrap_or_default(),
        };
        self.err(
            key.span(),
            ErrorKind::UnknownKey,
            format!(
                "unknown key `{name}` in {section}; {hint}allowed keys: {}",
                allowed.join(", ")
            ),
        );
    }

    fn wrong_type(&mut self, key: &str, v: &Val<'_>, expected: &str) {
        self.err(
            v.span(),
            ErrorKind::WrongType,
            format!(
                "`{key}` must be {expected}, found {}",
                v.get_ref().type_str()
            ),
        );
    }

    pub(crate) fn invalid(&mut self, v: &Val<'_>, message: String) {
        self.err(v.span(), ErrorKind::InvalidValue, message);
    }

    pub(crate) fn table<'a, 'i>(&mut self, key: &str, v: &'a Val<'i>) -> Option<&'a DeTable<'i>> {
        match v.get_ref() {
            DeValue::Table(t) => Some(t),
            _ => {
                self.wrong_type(key, v, "a table");
                None
            }
        }
    }

    pub(crate) fn string<'a>(&mut self, key: &str, v: &'a Val<'_>) -> Option<&'a str> {
        match v.get_ref() {
            DeValue::String(s) => Some(s.as_ref()),
            _ => {
                self.wrong_type(key, v, "a string");
                None
            }
        }
    }

    /// A non-empty string without NUL bytes.
    pub(crate) fn nonempty_string(&mut self, key: &str, v: &Val<'_>) -> Option<String> {
        let s = self.string(key, v)?;
        if s.is_empty() || s.contains('\0') {
            self.invalid(v, format!("`{key}` must not be empty"));
            return None;
        }
        Some(s.to_owned())
    }

    /// An integer within `min..=max`; `unit` describes it for the message.
    pub(crate) fn int(
        &mut self,
        key: &str,
        v: &Val<'_>,
        min: u64,
        max: u64,
        unit: &str,
    ) -> Option<u64> {
        let DeValue::Integer(i) = v.get_ref() else {
            self.wrong_type(key, v, &format!("an integer ({unit})"));
            return None;
        };
        let parsed = i64::from_str_radix(i.as_str(), i.radix()).ok();
        match parsed.and_then(|n| u64::try_from(n).ok()) {
            Some(n) if (min..=max).contains(&n) => Some(n),
            _ => {
                self.invalid(
                    v,
                    format!(
                        "`{key}` = {} is out of range; allowed {min}..={max} ({unit})",
                        i.as_str()
                    ),
                );
                None
            }
        }
    }

    /// An integer in the option's unit, or a string with a DRBD suffix (s, k, M, G).
    pub(crate) fn scaled(
        &mut self,
        key: &str,
        v: &Val<'_>,
        unit_bytes: u64,
        min: u64,
        max: u64,
        unit: &str,
    ) -> Option<u64> {
        match v.get_ref() {
            DeValue::Integer(_) => self.int(key, v, min, max, unit),
            DeValue::String(s) => match parse_scaled(s, unit_bytes) {
                Ok(n) if (min..=max).contains(&n) => Some(n),
                Ok(n) => {
                    self.invalid(
                        v,
                        format!("`{key}` = \"{s}\" ({n} {unit}) is out of range; allowed {min}..={max} ({unit})"),
                    );
                    None
                }
                Err(why) => {
                    self.invalid(v, format!("`{key}`: {why}"));
                    None
                }
            },
            _ => {
                self.wrong_type(
                    key,
                    v,
                    &format!("an integer ({unit}) or a string with suffix like \"250k\""),
                );
                None
            }
        }
    }

    /// A boolean; DRBD's "yes"/"no" strings are accepted too.
    pub(crate) fn boolean(&mut self, key: &str, v: &Val<'_>) -> Option<bool> {
        match v.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            DeValue::String(s) if s == "yes" => Some(true),
            DeValue::String(s) if s == "no" => Some(false),
            _ => {
                self.wrong_type(key, v, "true/false (or \"yes\"/\"no\")");
                None
            }
        }
    }

    /// One of `allowed` (a string); suggests the nearest on a typo.
    pub(crate) fn choice<'a>(
        &mut self,
        key: &str,
        v: &'a Val<'_>,
        allowed: &[&str],
    ) -> Option<&'a str> {
        let s = self.string(key, v)?;
        if allowed.contains(&s) {
            return Some(s);
        }
        let hint = did_you_mean(s, allowed)
            .map(|c| format!("did you mean \"{c}\"? "))
            .unwrap_or_default();
        self.invalid(
            v,
            format!(
                "`{key}` = \"{s}\" is not allowed; {hint}allowed: {}",
                allowed.join(", ")
            ),
        );
        None
    }

    /// An array of strings.
    pub(crate) fn string_list<'a>(
        &mut self,
        key: &str,
        v: &'a Val<'_>,
    ) -> Option<Vec<(&'a str, Range<usize>)>> {
        let DeValue::Array(items) = v.get_ref() else {
            self.wrong_type(key, v, "an array of strings");
            return None;
        };
        let mut out = Vec::new();
        for item in items.iter() {
            out.push((self.string(key, item)?, item.span()));
        }
        Some(out)
    }
}

/// Table entries in document order (toml's map is sorted by key).
pub(crate) fn entries<'a, 'i>(
    table: &'a DeTable<'i>,
) -> Vec<(&'a Spanned<std::borrow::Cow<'i, str>>, &'a Val<'i>)> {
    let mut v: Vec<_> = table.iter().collect();
    v.sort_by_key(|(k, _)| k.span().start);
    v
}
