//! The lifecycle of a drainable: the word that holds it, and the debug-build detector of the
//! one deadlock it can see coming.

pub(crate) mod track;
pub(crate) mod word;
