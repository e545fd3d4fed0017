//! HTTP/1.1 wire format: head parsing with strict framing rules, chunked coding, head writing.
//! Pure byte work; sockets are the proxy's business.

pub mod chunked;
pub mod edits;
pub mod head;
pub mod parse;
pub mod response_head;
pub mod write;
