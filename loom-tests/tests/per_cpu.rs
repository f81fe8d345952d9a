//! The drainable contract's loom scenarios (`scenarios/mod.rs`) for `PerCpuDrainable`. Under
//! loom every acquisition picks the next slot, so guards are taken and given back on different
//! slots than their neighbours', and a thread's release lands on a slot another thread just
//! used: the migration cases.

use drainable::PerCpuDrainable as Drainable;
type OwnedGuard<T> = drainable::OwnedGuard<T, drainable::PerCpu>;

mod scenarios;
