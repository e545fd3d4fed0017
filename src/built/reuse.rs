//! Documents and validators kept from earlier config generations, by document text: a reload
//! or admin change parses and compiles again only the APIs whose document changed.
//! Build step only (its lock is never taken on the request path); must not route or serve.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex, Weak};

use crate::openapi::{self, Compiled, DocError, Document};

/// What a live generation still holds for one document text. Weak: the cache keeps nothing
/// alive once no generation uses it (dead entries are dropped on the next load).
struct Entry {
    text: Arc<str>,
    doc: Weak<Document>,
    compiled: Weak<Compiled>,
}

static KEPT: Mutex<Vec<(u64, Entry)>> = Mutex::new(Vec::new());

fn key(text: &str) -> u64 {
    let mut h = DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

/// `text` parsed, and its validators when `compile`: the ones a live generation already has
/// for the same text, else made now (and kept for the next generation).
pub fn load(
    text: &Arc<str>,
    compile: bool,
) -> Result<(Arc<Document>, Option<Arc<Compiled>>), DocError> {
    let k = key(text);
    let found = {
        // A poisoned lock only means a build panicked; the entries are still whole.
        let mut kept = KEPT.lock().unwrap_or_else(|p| p.into_inner());
        kept.retain(|(_, e)| e.doc.strong_count() > 0);
        kept.iter()
            .find(|(h, e)| *h == k && *e.text == **text)
            .map(|(_, e)| (e.doc.upgrade(), e.compiled.upgrade()))
    };
    let (doc, compiled) = found.unwrap_or((None, None));
    let doc = match doc {
        Some(d) => d,
        None => Arc::new(openapi::parse(text)?),
    };
    let compiled = match (compile, compiled) {
        (false, _) => None,
        (true, Some(c)) => Some(c),
        (true, None) => Some(Arc::new(openapi::compile(&doc)?)),
    };
    let mut kept = KEPT.lock().unwrap_or_else(|p| p.into_inner());
    let entry = Entry {
        text: text.clone(),
        doc: Arc::downgrade(&doc),
        compiled: compiled.as_ref().map_or_else(Weak::new, Arc::downgrade),
    };
    match kept.iter_mut().find(|(h, e)| *h == k && *e.text == **text) {
        Some((_, e)) => {
            e.doc = entry.doc;
            if e.compiled.strong_count() == 0 {
                e.compiled = entry.compiled;
            }
        }
        None => kept.push((k, entry)),
    }
    Ok((doc, compiled))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "openapi: 3.0.0\ninfo: {title: t, version: '1'}\npaths:\n  /a/{id}:\n    get:\n      parameters: [{name: id, in: path, required: true, schema: {type: integer}}]\n      responses: {'200': {description: ok}}\n";

    #[test]
    fn same_text_same_validators_while_a_generation_holds_them() {
        let text: Arc<str> = DOC.into();
        let (d1, c1) = load(&text, true).expect("loads");
        // The same text read again (another Arc) gets the very same document and validators.
        let again: Arc<str> = DOC.to_string().into();
        let (d2, c2) = load(&again, true).expect("loads");
        assert!(Arc::ptr_eq(&d1, &d2));
        assert!(Arc::ptr_eq(
            c1.as_ref().expect("c1"),
            c2.as_ref().expect("c2")
        ));
        // A changed document is its own.
        let changed: Arc<str> = DOC.replace("integer", "string").into();
        let (d3, _) = load(&changed, true).expect("loads");
        assert!(!Arc::ptr_eq(&d1, &d3));
        // Once nothing holds them, they are made anew.
        let weak = Arc::downgrade(&d1);
        drop((d1, c1, d2, c2));
        assert!(weak.upgrade().is_none());
        let (d4, c4) = load(&text, false).expect("loads");
        assert_eq!(d4.ops.len(), 1);
        assert!(c4.is_none());
        assert!(load(&Arc::from("openapi: [oops"), true).is_err());
    }
}
