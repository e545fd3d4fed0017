//! Fuzz-target support: the property functions every target calls (see props.rs).
pub mod props;
