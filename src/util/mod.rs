//! Leaf utilities every layer may use: copy-on-write containers, byte-key hashers, unit parsing,
//! addresses as inline text, slot-table trimming and the cross-core mesh (util/mesh.rs). Must not import any other module of the crate.

pub mod civil;
pub mod cow;
pub mod hash;
pub mod ip_text;
pub mod mesh;
pub mod slots;
pub mod units;
