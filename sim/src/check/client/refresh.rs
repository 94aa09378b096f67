//! The refresh checks of [`ClientMonitor`]: one request out at a time (C1),
//! no token presented after its successor was received (C2) or before the
//! store held it (C3), backoff and its bounds (C6), and a request that
//! awaits the user not repeated (U6).

use super::*;

#[derive(Clone, Debug)]
pub(super) struct Sent {
    pub(super) token: Fingerprint,
    pub(super) at: MonoTime,
    pub(super) attempt: u32,
    /// When its answer came, and whether that answer asked for a pause.
    pub(super) answered: Option<(MonoTime, Answer)>,
    /// Its answer says what the server issued for it: nothing (a refusal, a
    /// 429, a request never sent) or what the answer carried. A later grace
    /// replay can only carry tokens issued for an attempt not settled.
    pub(super) settled: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Answer {
    Transient { retry_after: Option<Duration> },
    Terminal,
    Other,
}

impl ClientMonitor {
    pub(super) fn refresh_sent(&mut self, now: MonoTime, id: RefreshId, token: Fingerprint, attempt: u32) {
        self.unserved_since_arrival.clear();
        let timeout = self.config.request_timeout;
        if let Some((other, _)) =
            self.sent.iter().find(|(_, s)| s.answered.is_none() && now < s.at.saturating_add(timeout))
        {
            let other = *other;
            self.violate(Invariant::C1, now, format!("sent {id} while {other} was in flight"));
        }
        if self.superseded.contains(&token) {
            self.violate(Invariant::C2, now, format!("{id} presented {token}, whose successor was received"));
        }
        if self.dead.contains(&token) {
            self.violate(Invariant::C6, now, format!("{id} presented {token}, which was declared dead"));
        }
        // Write-ahead for refreshes: the store's token is what another
        // process, or this one after a crash, presents next; a cycle that
        // rotates past an unwritten token moves it further out of any grace.
        // Every attempt is held to it: a later one presents what the first
        // did, or a token salvaged within the cycle, once written.
        if self.unwritten.contains(&token) {
            self.violate(Invariant::C3, now, format!("{id} presented {token} before the store held it"));
        }
        // A forced refresh is the app's word that the user acted (or that it
        // wants to try once more): it may present the token again.
        if self.awaits_user.contains_key(&token) && self.forced.is_empty() {
            self.violate(
                Invariant::U6,
                now,
                format!("{id} presented {token} again, which awaits the user's interaction"),
            );
        }
        // A forced refresh lifts the request: what follows is up to the server.
        if !self.forced.is_empty() {
            self.awaits_user.remove(&token);
        }
        if self.logged_out.is_some() {
            self.violate(Invariant::C4, now, format!("sent {id} while logged out"));
        }
        // One extra attempt is allowed after a token is salvaged or adopted from the store.
        if attempt > self.config.backoff.attempts + 1 {
            self.violate(Invariant::C6, now, format!("{id} is attempt {attempt}, above the bound"));
        }
        if let Some(previous) = self.sent.values().next_back().filter(|_| attempt > 1) {
            // An attempt fails at its answer or at its deadline, whichever comes first.
            let deadline = previous.at.saturating_add(timeout);
            let failed_at = match previous.answered {
                Some((at, Answer::Transient { retry_after })) if at < deadline => Some((at, retry_after)),
                Some((_, Answer::Transient { .. })) | None => Some((deadline, None)),
                Some(_) => None,
            };
            if let Some((failed_at, retry_after)) = failed_at.filter(|_| previous.token == token) {
                let floor = self.config.backoff.floor(previous.attempt);
                let pause = retry_after.filter(|r| *r <= self.config.max_retry_after).unwrap_or_default();
                let earliest = failed_at.saturating_add(floor.max(pause));
                if now < earliest {
                    self.violate(Invariant::C6, now, format!("{id} retried before {earliest} (backoff)"));
                }
            }
        }
        self.sent.insert(id, Sent { token, at: now, attempt, answered: None, settled: false });
    }

    pub(super) fn refresh_answered(&mut self, now: MonoTime, id: RefreshId, outcome: &Classified) {
        if let (Some(asked), Classified::Transient(Transient { cause: TransientCause::RateLimited, retry_after })) =
            (self.retry_after_asked, outcome)
            && *retry_after != Some(asked)
        {
            let detail = format!("{id} was asked to wait {asked:?} (429) and read {retry_after:?}");
            self.violate(Invariant::C6, now, detail);
        }
        let Some(sent) = self.sent.get_mut(&id) else { return };
        let token = sent.token;
        let answer = match outcome {
            Classified::Transient(Transient { retry_after, .. }) => Answer::Transient { retry_after: *retry_after },
            Classified::Malformed(_) => Answer::Transient { retry_after: None },
            Classified::Terminal(_) => Answer::Terminal,
            _ => Answer::Other,
        };
        // One request gets one answer: a second one for the same id is a
        // duplicate (or nonsense), and says nothing new.
        if sent.answered.is_some() {
            return;
        }
        if let Answer::Transient { retry_after: Some(wait) } = answer {
            self.failure_excused_until = self.failure_excused_until.max(now.saturating_add(wait));
        }
        sent.answered = Some((now, answer));
        sent.settled = match outcome {
            Classified::Success(_)
            | Classified::Terminal(_)
            | Classified::Rejected(_)
            | Classified::InteractionRequired(_)
            // The server did not act on it (RFC 9449 §8).
            | Classified::NonceRequired(_) => true,
            Classified::Transient(Transient { cause, .. }) => !matches!(cause, TransientCause::ServerError(_)),
            Classified::Malformed(_) => false,
        };
        let sent_at = sent.at;
        if let Classified::Success(response) = outcome {
            let access = response.access_token.fingerprint();
            self.seen_access.entry(access).or_insert(now);
            // A rotated answer may be a grace replay of what the server issued
            // an earlier presentation that may have committed (since the token
            // was last kept); an unrotated one was issued now.
            let rotated = response.refresh_token.as_ref().is_some_and(|r| r.fingerprint() != token);
            let presented = if rotated {
                let since = self.kept_since.get(&token).copied().unwrap_or(MonoTime::ZERO);
                self.sent
                    .values()
                    .filter(|s| s.token == token && s.at >= since && !s.settled)
                    .map(|s| s.at)
                    .fold(sent_at, MonoTime::min)
            } else {
                self.kept_since.insert(token, now);
                sent_at
            };
            if let Some(lifetime) = response.lifetime {
                // The session keeps the first answer that carried these
                // bytes; a straggler's copy of them changes nothing.
                self.usable_at_most.entry(access).or_insert(presented.saturating_add(lifetime));
            }
        }
        let successor = match outcome {
            Classified::Success(response) => response.refresh_token.as_ref().map(|r| r.fingerprint()),
            Classified::Malformed(malformed) => malformed.salvaged_refresh_token.as_ref().map(|r| r.fingerprint()),
            _ => None,
        };
        if let Some(successor) = successor.filter(|s| *s != token) {
            self.superseded.insert(token);
            // A grace replay of a rotation already received (and maybe
            // written since), or already read from the store, is no new
            // token. One salvaged from a malformed answer is held to the
            // same rule: written before presented.
            if self.successor_of.entry(token).or_default().insert(successor) && !self.once_stored.contains(&successor) {
                self.unwritten.insert(successor);
            }
        }
        match outcome {
            Classified::InteractionRequired(_) => {
                let held = self.state.generation().unwrap_or(Generation(0));
                self.awaits_user.insert(token, (held, now));
            }
            // The server's later word on the token replaces the request.
            Classified::Success(_) | Classified::Rejected(_) | Classified::Terminal(_) => {
                self.awaits_user.remove(&token);
            }
            _ => {}
        }
        if answer == Answer::Terminal {
            self.dead.insert(token);
            // The session must act on it if the rejected token is still the one it holds.
            let held = self.latest_token() == Some(token) && !self.superseded.contains(&token);
            if held && self.logged_out.is_none() {
                self.awaiting_logout.get_or_insert(now);
            }
        }
        if matches!(outcome, Classified::Success(_)) {
            self.awaiting_logout = None;
        }
    }
}
