//! The lifecycle of a drainable, written once for both counters: the word that holds it
//! ([`Word`]: its layout, its named transitions, the spin-then-sleep waits and the one answer
//! to "is this close over?"), and the debug-build detector of the one deadlock it can see
//! coming (`track`); and the process-wide side table (`table`) that counts the reversible
//! closes beyond what the word's field holds.
//!
//! A counter (`crate::counter`) decides where guards are counted and what a close or an open
//! does to those counts; it changes the word only through [`Word`]'s transitions, and gives
//! back only the [`Token`]s a close handed it.

mod table;
pub(crate) mod track;
pub(crate) mod word;

pub(crate) use word::{
    Closing, Hold, MAX_GUARDS, Open, Phase, Refused, Token, Word, count, is_closed, phase,
};
