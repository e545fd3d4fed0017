//! openid-connect's browser flow (`bearer_only = false`) on the shard: the redirect to the
//! provider (state, nonce, PKCE S256), the callback, the session cookie, refresh, logout. Token
//! calls go to the control thread (the request parks on a `Wait`); no I/O and no blocking here.

// A request without a bearer token on a browser-flow route goes:
//   callback path  -> the login cookie must match `state`; the code is exchanged (worker thread:
//                     ID token verified with nonce, iss, aud, exp); 302 back with the session.
//   logout path    -> session cookies cleared; 302 to the provider's end_session_endpoint.
//   session cookie -> admitted (a cookie already opened on this shard is recognised by its bytes
//                     until its access token expires); an expired access token is refreshed
//                     first, the new cookie set on the upstream's response.
//   none / bad     -> unauth_action: a login (302 with a login cookie), 401, or pass.

use std::rc::Rc;
use std::time::{Duration, Instant};

use base64::Engine;

use super::calls::{Failed, Tokens};
use super::conf::{Browser, Unauth};
use super::remote::{Ask, Mailbox};
use super::session::{self, challenge, form_encode, query_param, Login, Session};
use super::{unix_now, Grant, Side, MAX_REUSE_SECS};
use crate::http::parse::RequestHead;
use crate::plugin::{Ctx, Flow, Reply, Until, Wait};

/// How long a login may take at the provider (the login cookie's lifetime).
const LOGIN_SECS: u64 = 600;
/// How long a token answer stays for other requests of the same session (parallel refreshes).
pub(super) const ANSWER_KEEP: Duration = Duration::from_secs(30);

fn reply_401(message: &str) -> Flow {
    Flow::Respond(Reply::json_message(401, message))
}

/// Where a browser goes after signing in: a local path only (never `//host`, an open redirect).
fn local(back: &[u8]) -> String {
    match std::str::from_utf8(back) {
        Ok(s) if s.starts_with('/') && !s.starts_with("//") && !s.contains('\\') => s.to_string(),
        _ => "/".to_string(),
    }
}

impl Side {
    pub(super) fn browse(
        self: &Rc<Self>,
        b: &Browser,
        req: &RequestHead,
        cx: &mut Ctx,
        waited: bool,
    ) -> Flow {
        let now = cx.start;
        let path = req.path();
        if path == b.callback_path.as_bytes() {
            return self.callback(b, req, cx, waited);
        }
        if path == b.logout_path.as_bytes() {
            return self.logout(b, req);
        }
        let cookies = req.header("cookie").unwrap_or_default();
        if let Some(raw) = session::read_chunked(cookies, &b.cookie) {
            if let Some(g) = self.sessions.borrow().get(&raw, now).cloned() {
                return self.admit(&g, cx);
            }
            if let Some(s) = b.sealer.open::<Session>(&b.cookie, &raw) {
                let t = unix_now();
                if s.exp > t {
                    if s.access_exp == 0 || s.access_exp > t {
                        let g = Rc::new(self.session_grant(&s));
                        let until = if s.access_exp == 0 {
                            s.exp
                        } else {
                            s.exp.min(s.access_exp)
                        };
                        let left = (until - t).min(MAX_REUSE_SECS);
                        self.sessions.borrow_mut().insert(
                            &raw,
                            now + Duration::from_secs(left),
                            g.clone(),
                            now,
                        );
                        return self.admit(&g, cx);
                    }
                    if b.renew && s.refresh_token.is_some() {
                        return self.refresh(b, s, req, cx, waited);
                    }
                }
            }
        }
        self.unauthenticated(b, local(req.path_and_query()), cx, waited, Vec::new())
    }

    /// No usable session: `unauth_action` decides. `also` are Set-Cookie values to send along.
    fn unauthenticated(
        self: &Rc<Self>,
        b: &Browser,
        back: String,
        cx: &mut Ctx,
        waited: bool,
        also: Vec<String>,
    ) -> Flow {
        match self.s.unauth {
            Unauth::Pass => Flow::Continue,
            Unauth::Deny => reply_401("authorization required"),
            Unauth::Auth => self.login(b, back, cx, waited, also),
        }
    }

    /// 302 to the provider's authorization endpoint, the login's secrets in the login cookie.
    fn login(
        self: &Rc<Self>,
        b: &Browser,
        back: String,
        cx: &mut Ctx,
        waited: bool,
        also: Vec<String>,
    ) -> Flow {
        let endpoint = self
            .disc
            .borrow()
            .as_ref()
            .and_then(|d| d.authorization_endpoint.clone());
        let Some(endpoint) = endpoint else {
            // Discovery has not reached this shard yet: wait for it once.
            if waited {
                return self.unavailable();
            }
            return match self.refetch(cx.start) {
                Some(w) => self.park(w, cx),
                None => self.unavailable(),
            };
        };
        let r = &b.sealer;
        let (Some(state), Some(nonce), Some(verifier)) = (r.random(16), r.random(16), r.random(32))
        else {
            return self.unavailable();
        };
        let code_challenge = challenge(&verifier);
        let l = Login {
            exp: unix_now() + LOGIN_SECS,
            state,
            nonce,
            verifier,
            back,
        };
        let Some(sealed) = r.seal(&b.state_cookie, &l) else {
            return self.unavailable();
        };
        let sep = if endpoint.contains('?') { '&' } else { '?' };
        let location = format!(
            "{endpoint}{sep}response_type=code&client_id={}&redirect_uri={}&scope={}&state={}\
             &nonce={}&code_challenge={code_challenge}&code_challenge_method=S256",
            form_encode(&self.s.endpoints.client_id),
            form_encode(&b.redirect_uri),
            form_encode(&b.scope),
            l.state,
            l.nonce,
        );
        let mut reply = Reply::new(302)
            .header("Location", location)
            .header("Cache-Control", "no-store");
        for c in also {
            reply = reply.header("Set-Cookie", c);
        }
        let c = session::set_cookie(&b.state_cookie, &sealed, LOGIN_SECS, b.secure);
        Flow::Respond(reply.header("Set-Cookie", c))
    }

    fn callback(
        self: &Rc<Self>,
        b: &Browser,
        req: &RequestHead,
        cx: &mut Ctx,
        waited: bool,
    ) -> Flow {
        let q = req.query();
        let cookies = req.header("cookie").unwrap_or_default();
        let login = session::cookie(cookies, &b.state_cookie)
            .and_then(|v| b.sealer.open::<Login>(&b.state_cookie, v))
            .filter(|l| l.exp > unix_now());
        let state = query_param(q, "state");
        let Some(l) = login.filter(|l| state.as_deref() == Some(l.state.as_str())) else {
            // No login of this browser matches (expired, tampered, another tab's): start over.
            return self.unauthenticated(b, "/".into(), cx, waited, Vec::new());
        };
        let clear_login = session::set_cookie(&b.state_cookie, "", 0, b.secure);
        if query_param(q, "error").is_some() {
            return Flow::Respond(
                Reply::json_message(401, "login failed").header("Set-Cookie", clear_login),
            );
        }
        let Some(code) = query_param(q, "code").filter(|c| !c.is_empty()) else {
            return reply_401("login failed");
        };
        let answer = self.answers.borrow().get(&code).map(|a| a.1.clone());
        match answer.as_deref() {
            Some(Ok(t)) => {
                let now = unix_now();
                let s = session_of(t, now + b.lifetime, None);
                let Some(cookies) = self.seal_session(b, &s, now) else {
                    return self.unavailable();
                };
                let mut reply = Reply::new(302)
                    .header("Location", l.back)
                    .header("Cache-Control", "no-store")
                    .header("Set-Cookie", clear_login);
                for c in cookies {
                    reply = reply.header("Set-Cookie", c);
                }
                Flow::Respond(reply)
            }
            Some(Err(Failed::Refused(e))) => {
                log::info!("openid-connect: a login failed at the code exchange: {e}");
                Flow::Respond(
                    Reply::json_message(401, "login failed").header("Set-Cookie", clear_login),
                )
            }
            Some(Err(Failed::Unavailable(e))) => {
                log::warn!("openid-connect: a code exchange got no answer: {e}");
                self.unavailable()
            }
            None if waited => self.unavailable(),
            None => {
                let ask = |reply| Ask::Exchange {
                    code: code.clone(),
                    verifier: l.verifier.clone(),
                    nonce: l.nonce.clone(),
                    reply,
                };
                match self.ask_tokens(&code, ask) {
                    Some(w) => self.park(w, cx),
                    None => self.unavailable(),
                }
            }
        }
    }

    /// The session's access token expired: new tokens for its refresh token, the new cookie on
    /// the response; a refused refresh ends the session (a new login).
    fn refresh(
        self: &Rc<Self>,
        b: &Browser,
        s: Session,
        req: &RequestHead,
        cx: &mut Ctx,
        waited: bool,
    ) -> Flow {
        let rt = s.refresh_token.clone().unwrap_or_default();
        let answer = self.answers.borrow().get(&rt).map(|a| a.1.clone());
        match answer.as_deref() {
            Some(Ok(t)) => {
                let now = unix_now();
                let fresh = session_of(t, s.exp, Some(&s));
                let Some(cookies) = self.seal_session(b, &fresh, now) else {
                    return self.unavailable();
                };
                for c in cookies {
                    cx.resp_headers.add(b"set-cookie", c.as_bytes());
                }
                let g = self.session_grant(&fresh);
                self.admit(&g, cx)
            }
            Some(Err(Failed::Refused(e))) => {
                log::debug!("openid-connect: a session's refresh was refused: {e}");
                let clear = session::clear_chunked(&b.cookie, b.secure);
                self.unauthenticated(b, local(req.path_and_query()), cx, waited, clear)
            }
            Some(Err(Failed::Unavailable(_))) => self.unavailable(),
            None if waited => self.unavailable(),
            None => {
                let ask = |reply| Ask::Refresh {
                    token: rt.clone(),
                    reply,
                };
                match self.ask_tokens(&rt, ask) {
                    Some(w) => self.park(w, cx),
                    None => self.unavailable(),
                }
            }
        }
    }

    /// Session cookies cleared; 302 to the provider's end_session_endpoint (RP-initiated
    /// logout, with id_token_hint and post_logout_redirect_uri), else to
    /// post_logout_redirect_uri, else 200.
    fn logout(&self, b: &Browser, req: &RequestHead) -> Flow {
        let cookies = req.header("cookie").unwrap_or_default();
        let hint = session::read_chunked(cookies, &b.cookie)
            .and_then(|raw| b.sealer.open::<Session>(&b.cookie, &raw))
            .and_then(|s| s.id_token);
        let end = self
            .disc
            .borrow()
            .as_ref()
            .and_then(|d| d.end_session_endpoint.clone());
        let mut reply = match (end, &b.post_logout_redirect_uri) {
            (Some(end), post) => {
                let sep = if end.contains('?') { '&' } else { '?' };
                let mut loc = format!(
                    "{end}{sep}client_id={}",
                    form_encode(&self.s.endpoints.client_id)
                );
                if let Some(h) = hint {
                    loc.push_str(&format!("&id_token_hint={}", form_encode(&h)));
                }
                if let Some(p) = post {
                    loc.push_str(&format!("&post_logout_redirect_uri={}", form_encode(p)));
                }
                Reply::new(302).header("Location", loc)
            }
            (None, Some(p)) => Reply::new(302).header("Location", p.clone()),
            (None, None) => Reply::json_message(200, "logged out"),
        };
        reply = reply.header("Cache-Control", "no-store");
        for c in session::clear_chunked(&b.cookie, b.secure) {
            reply = reply.header("Set-Cookie", c);
        }
        Flow::Respond(reply)
    }

    /// Set-Cookie values carrying `s` (None if sealing failed or it is too big for cookies).
    fn seal_session(&self, b: &Browser, s: &Session, now: u64) -> Option<Vec<String>> {
        let sealed = b.sealer.seal(&b.cookie, s)?;
        let cookies =
            session::write_chunked(&b.cookie, &sealed, s.exp.saturating_sub(now), b.secure);
        if cookies.is_none() {
            log::warn!(
                "openid-connect: a session of {} bytes does not fit in {} cookies",
                sealed.len(),
                session::MAX_CHUNKS
            );
        }
        cookies
    }

    /// What a session admits: the grant of its access token and claims, plus the ID token.
    fn session_grant(&self, s: &Session) -> Grant {
        let mut g = self.grant(&s.access_token, &s.claims);
        // Scopes are checked on bearer tokens; a signed-in browser has what its login granted.
        g.scope_ok = true;
        if self.s.access_token_in_authorization_header {
            let v = format!("Bearer {}", s.access_token);
            g.headers.push((b"Authorization".to_vec(), v.into_bytes()));
        }
        if self.s.set_id_token_header {
            // APISIX sends the ID token's claims, base64 of their JSON: its payload, re-encoded.
            let payload = s.id_token.as_deref().and_then(|t| t.split('.').nth(1));
            let json = payload.and_then(|p| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(p)
                    .ok()
            });
            if let Some(json) = json {
                let v = base64::engine::general_purpose::STANDARD.encode(json);
                g.headers.push((b"X-ID-Token".to_vec(), v.into_bytes()));
            }
        }
        g
    }

    /// Sends the ask for `key` (a code or a refresh token) unless one is out; the wait for it.
    fn ask_tokens(self: &Rc<Self>, key: &str, ask: impl FnOnce(Mailbox) -> Ask) -> Option<Wait> {
        let ends = self.ends.as_ref()?;
        if !self.asked.borrow().contains(key) {
            ends.asks.send(ask(ends.reply.clone())).ok()?;
            self.asked.borrow_mut().insert(key.to_string());
        }
        let me = self.clone();
        let key = key.to_string();
        Some(Wait {
            until: Until::Ready(Box::new(move || {
                me.drain(Instant::now());
                !me.asked.borrow().contains(&key)
            })),
            // The worker's own timeout, and userinfo's after the token call.
            within: self.s.endpoints.timeout * 2 + Duration::from_millis(500),
        })
    }

    pub(super) fn park(&self, w: Wait, cx: &mut Ctx) -> Flow {
        cx.private.oidc_waited = true;
        Flow::Wait(w)
    }

    /// A token answer arrived: kept `ANSWER_KEEP` for every request that waits on it.
    pub(super) fn answered(&self, key: String, result: Result<Tokens, Failed>, now: Instant) {
        self.asked.borrow_mut().remove(&key);
        let mut a = self.answers.borrow_mut();
        a.retain(|_, (at, _)| now.saturating_duration_since(*at) < ANSWER_KEEP);
        a.insert(key, (now, Rc::new(result)));
    }
}

/// A session from a token answer; a refresh keeps what the answer leaves out (refresh token,
/// ID token, claims) and the session's end.
fn session_of(t: &Tokens, exp: u64, old: Option<&Session>) -> Session {
    let now = unix_now();
    Session {
        exp,
        access_token: t.access_token.clone(),
        access_exp: t.expires_in.map_or(0, |e| now.saturating_add(e)),
        refresh_token: t
            .refresh_token
            .clone()
            .or_else(|| old.and_then(|o| o.refresh_token.clone())),
        id_token: t
            .id_token
            .clone()
            .or_else(|| old.and_then(|o| o.id_token.clone())),
        claims: match old {
            Some(o) => o.claims.clone(),
            None => t.claims.clone(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn only_local_paths_are_redirected_back_to() {
        assert_eq!(local(b"/a?b=1"), "/a?b=1");
        assert_eq!(local(b"//evil.example/x"), "/");
        assert_eq!(local(b"/\\evil"), "/");
        assert_eq!(local(b"http://x/"), "/");
        assert_eq!(local(b"\xff"), "/");
    }

    #[test]
    fn a_refresh_keeps_what_the_answer_leaves_out() {
        let old = Session {
            exp: 99,
            access_token: "a".into(),
            access_exp: 1,
            refresh_token: Some("r".into()),
            id_token: Some("i".into()),
            claims: serde_json::from_str(r#"{"sub":"u"}"#).unwrap(),
        };
        let t = Tokens {
            access_token: "b".into(),
            expires_in: Some(60),
            refresh_token: None,
            id_token: None,
            claims: serde_json::Map::new(),
        };
        let s = session_of(&t, old.exp, Some(&old));
        assert_eq!(s.access_token, "b");
        assert_eq!(s.refresh_token.as_deref(), Some("r"));
        assert_eq!(s.id_token.as_deref(), Some("i"));
        assert_eq!(s.claims.get("sub"), Some(&Value::from("u")));
        assert!(s.access_exp > unix_now());
    }
}
