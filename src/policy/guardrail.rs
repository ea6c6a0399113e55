//! Guardrails: deny patterns and words, compiled into one case-insensitive-for-words regex per
//! policy, checked on request text, response text and streamed deltas.
//!
//! Words match whole words, case-insensitively (`bomb` does not match `bombay`). In streams a
//! match split across deltas still counts: blocking checks each delta together with the tail
//! of the text before it; redaction holds back the last few hundred characters until more text
//! shows they cannot start a match, then emits them redacted.

use crate::entities::policy::{AppliesTo, GuardrailAction, GuardrailConfig};
use regex::Regex;
use serde_json::Value;

pub const REDACTED: &str = "[REDACTED]";
/// How much earlier text a stream match may span (characters).
const WINDOW: usize = 1024;
/// How much text redaction holds back in a stream (characters).
const HOLDBACK: usize = 256;

#[derive(Debug)]
pub struct Guardrail {
    pub name: String,
    pub action: GuardrailAction,
    pub applies_to: AppliesTo,
    regex: Regex,
}

fn word_pattern(w: &str) -> String {
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
    let (pre, post) = (
        if edge(w.chars().next()) { r"\b" } else { "" },
        if edge(w.chars().last()) { r"\b" } else { "" },
    );
    format!("(?i:{pre}{}{post})", regex::escape(w))
}

/// Finds the texts of a request or answer (`policy::text`) and hands each to a callback.
pub type Texts = fn(&mut Value, &mut dyn FnMut(&mut String));

/// What a set of guardrails made of a whole request or answer.
pub enum Verdict<'g> {
    Clean,
    Redacted,
    Blocked(&'g Guardrail),
}

/// Runs each guardrail over the texts `texts` finds in `v`: a redacting one rewrites them in
/// place, and the first blocking one that matches stops the check. `hit` is told of every
/// guardrail that matched and its action label (for metrics).
pub fn check_whole<'g>(
    guards: &[&'g Guardrail],
    v: &mut Value,
    texts: Texts,
    mut hit: impl FnMut(&Guardrail, &'static str),
) -> Verdict<'g> {
    let mut verdict = Verdict::Clean;
    for g in guards {
        let mut matched = false;
        texts(v, &mut |s| match g.action {
            GuardrailAction::Block => matched |= g.matches(s),
            GuardrailAction::Redact => matched |= g.redact(s),
        });
        if !matched {
            continue;
        }
        hit(g, g.action_label());
        match g.action {
            GuardrailAction::Block => return Verdict::Blocked(g),
            GuardrailAction::Redact => verdict = Verdict::Redacted,
        }
    }
    verdict
}

impl Guardrail {
    /// The action as a metric label.
    pub fn action_label(&self) -> &'static str {
        match self.action {
            GuardrailAction::Block => "block",
            GuardrailAction::Redact => "redact",
        }
    }

    pub fn compile(name: &str, cfg: &GuardrailConfig) -> Option<Guardrail> {
        let parts: Vec<String> = cfg
            .deny_patterns
            .iter()
            .map(|p| format!("(?:{p})"))
            .chain(cfg.deny_words.iter().map(|w| word_pattern(w)))
            .collect();
        let regex = regex::RegexBuilder::new(&parts.join("|"))
            .size_limit(8 << 20)
            .build()
            .ok()?;
        Some(Guardrail {
            name: name.to_string(),
            action: cfg.action,
            applies_to: cfg.applies_to,
            regex,
        })
    }

    pub fn on_request(&self) -> bool {
        matches!(self.applies_to, AppliesTo::Request | AppliesTo::Both)
    }

    pub fn on_response(&self) -> bool {
        matches!(self.applies_to, AppliesTo::Response | AppliesTo::Both)
    }

    pub fn matches(&self, text: &str) -> bool {
        self.regex.is_match(text)
    }

    pub fn redact(&self, text: &mut String) -> bool {
        if !self.regex.is_match(text) {
            return false;
        }
        *text = self.regex.replace_all(text, REDACTED).into_owned();
        true
    }
}

/// What a stream guard decided for a delta.
#[derive(Debug, PartialEq, Eq)]
pub enum Delta {
    /// Emit this text (possibly empty, possibly redacted).
    Emit(String),
    /// A blocking guardrail matched: end the stream. Names the policy.
    Blocked(String),
}

/// Applies response guardrails to one streamed text (one choice).
pub struct StreamGuard<'a> {
    guards: Vec<&'a Guardrail>,
    /// Recent text, for matches that span deltas (blocking).
    tail: String,
    /// Text not yet emitted (redaction).
    pending: String,
}

fn char_floor(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

impl<'a> StreamGuard<'a> {
    pub fn new(guards: Vec<&'a Guardrail>) -> Self {
        StreamGuard {
            guards,
            tail: String::new(),
            pending: String::new(),
        }
    }

    fn redacting(&self) -> bool {
        self.guards
            .iter()
            .any(|g| g.action == GuardrailAction::Redact)
    }

    pub fn delta(&mut self, text: &str) -> Delta {
        self.tail.push_str(text);
        for g in self
            .guards
            .iter()
            .filter(|g| g.action == GuardrailAction::Block)
        {
            if g.matches(&self.tail) {
                return Delta::Blocked(g.name.clone());
            }
        }
        if self.tail.len() > WINDOW * 2 {
            let cut = char_floor(&self.tail, self.tail.len() - WINDOW);
            self.tail.drain(..cut);
        }
        if !self.redacting() {
            return Delta::Emit(text.to_string());
        }
        self.pending.push_str(text);
        // Emit all but the held-back end, never splitting a match.
        let mut at = char_floor(&self.pending, self.pending.len().saturating_sub(HOLDBACK));
        for g in self
            .guards
            .iter()
            .filter(|g| g.action == GuardrailAction::Redact)
        {
            for m in g.regex.find_iter(&self.pending) {
                if m.start() < at && m.end() > at {
                    at = m.start();
                }
            }
        }
        let mut out: String = self.pending.drain(..at).collect();
        self.redact(&mut out);
        Delta::Emit(out)
    }

    /// The held-back text, redacted, at the end of the stream.
    pub fn finish(&mut self) -> String {
        let mut out = std::mem::take(&mut self.pending);
        self.redact(&mut out);
        out
    }

    fn redact(&self, text: &mut String) {
        for g in self
            .guards
            .iter()
            .filter(|g| g.action == GuardrailAction::Redact)
        {
            g.redact(text);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(patterns: &[&str], words: &[&str], action: GuardrailAction) -> Guardrail {
        Guardrail::compile(
            "g",
            &GuardrailConfig {
                deny_patterns: patterns.iter().map(|s| s.to_string()).collect(),
                deny_words: words.iter().map(|s| s.to_string()).collect(),
                action,
                applies_to: AppliesTo::Both,
            },
        )
        .unwrap()
    }

    #[test]
    fn words_match_whole_words_case_insensitively() {
        let g = guard(&[], &["bomb", "c++"], GuardrailAction::Block);
        assert!(g.matches("build a BOMB now"));
        assert!(!g.matches("a trip to bombay"), "near miss");
        assert!(g.matches("I like c++."));
    }

    #[test]
    fn redaction_replaces_matches() {
        let g = guard(
            &[r"\b\d{3}-\d{2}-\d{4}\b"],
            &["secret"],
            GuardrailAction::Redact,
        );
        let mut t = "ssn 123-45-6789 is Secret".to_string();
        assert!(g.redact(&mut t));
        assert_eq!(t, "ssn [REDACTED] is [REDACTED]");
    }

    #[test]
    fn a_match_split_across_deltas_blocks() {
        let g = guard(&[], &["forbidden"], GuardrailAction::Block);
        let mut s = StreamGuard::new(vec![&g]);
        assert_eq!(s.delta("this is forb"), Delta::Emit("this is forb".into()));
        assert_eq!(s.delta("idden text"), Delta::Blocked("g".into()));
        let mut s = StreamGuard::new(vec![&g]);
        assert!(matches!(s.delta("forbiddance is fine"), Delta::Emit(_)));
    }

    #[test]
    fn split_stream_redaction_equals_whole_text_redaction() {
        let g = guard(&[r"\d{4}-\d{4}"], &["secret"], GuardrailAction::Redact);
        let text = "card 1234-5678 and a secret, then ".repeat(30);
        let mut whole = text.clone();
        g.redact(&mut whole);
        for step in [1, 3, 7, 50] {
            let mut s = StreamGuard::new(vec![&g]);
            let chars: Vec<char> = text.chars().collect();
            let mut out = String::new();
            for chunk in chars.chunks(step) {
                match s.delta(&chunk.iter().collect::<String>()) {
                    Delta::Emit(t) => out.push_str(&t),
                    Delta::Blocked(_) => panic!(),
                }
            }
            out.push_str(&s.finish());
            assert_eq!(out, whole, "step {step}");
        }
    }
}
