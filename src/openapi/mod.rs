//! OpenAPI 3.0 / 3.1 documents: reading one (JSON or YAML), the operations it defines (what the
//! build step turns into routes) and the request validators compiled from its schemas.
//! Pure functions of the document: no I/O, no config or routing types; nothing here runs per
//! request except `check::Operation::check_*`, which allocate only when a request is invalid.

pub mod check;
pub mod compile;
pub mod doc;
pub mod inputs;
mod params;
pub mod pointer;
pub mod problem;
mod yaml;

pub use check::{Failure, Operation, RequestParts};
pub use compile::{compile, Compiled};
pub use doc::{parse, Dialect, Document, Op};
pub use inputs::{Param, ParamIn};
pub use pointer::DocError;
