//! What happens to the world's processes from outside: the user logs in and
//! out, a process crashes, the machine suspends. Tests call these; the
//! world's own faults call them too.

use super::*;

impl World {
    /// The user logs out now (or once a suspended client resumes).
    pub fn log_out(&mut self) {
        self.log_out_at(0);
    }

    /// The user logs out in process `p`, as [`World::log_out`].
    pub fn log_out_at(&mut self, p: usize) {
        self.wake();
        self.input(p, Event::LogoutRequested);
    }

    /// The user logs in now, or once a suspended client resumes (the login
    /// itself is instantaneous).
    pub fn log_in(&mut self) {
        self.log_in_at(0);
    }

    /// The user logs in in process `p`, as [`World::log_in`].
    pub fn log_in_at(&mut self, p: usize) {
        self.wake();
        let Some(issued) = self.grant_login() else {
            // The authority refused a grant it issued a moment ago: no login
            // happens, and the liveness phase reports the session that has
            // none. (A8 and the authority's tests say why.)
            note_at!(self, p, "login refused by the authority");
            return;
        };
        // A bound login proved a key of its own, which the family is bound to.
        let key = self.config.dpop.then(|| self.dpop_keys.next_key());
        if let Some(key) = &key {
            self.authority.bind(self.now, issued.family, &key.thumbprint());
            self.keys_made.push(key.clone());
        }
        self.observe_authority();
        self.issued_at.entry(issued.access_token.fingerprint()).or_insert(self.now);
        let mut new = NewSession::issued(issued.access_token, issued.expires_in, issued.refresh_token, self.now);
        if let Some(key) = key {
            new.token_type = TokenType::DPoP;
            new = new.with_dpop_key(key);
        }
        // With several processes, another may still hold the old family and
        // meet its fate later: what the world knows about it stays.
        if self.processes.len() == 1 {
            self.evidence = LogoutEvidence::default();
        }
        self.new_caller_at(p, |caller| Event::LoggedIn { caller, session: new });
    }

    /// The tokens of a login by the world's [`LoginGrant`]. The user
    /// approves at once; a code exchange whose answer the network loses (at
    /// the world's `drop_response` rate) is presented again, as a client
    /// that retries would, and must be refused (A8): the user then starts
    /// over with a new code.
    fn grant_login(&mut self) -> Option<crate::authority::Issued> {
        use crate::authority::device::Decision;
        let now = self.now;
        match self.config.login {
            LoginGrant::Password => Some(self.authority.login(now, CLIENT_ID, None)),
            LoginGrant::Device => {
                let start = self.authority.start_device_login(now, CLIENT_ID);
                let approved = self.authority.decide_device_login(now, &start.user_code, Decision::Approve);
                let polled = self.authority.poll_device_login(now, CLIENT_ID, start.device_code.expose_secret());
                approved.then_some(polled.ok()).flatten()
            }
            LoginGrant::Code => {
                let (code, verifier, issued) = self.code_login();
                if issued.is_some() && self.rng.chance(u64::from(self.config.faults.drop_response), 1000) {
                    *self.stats.tally.faults.entry("login_answer_lost").or_default() += 1;
                    let again = self.authority.redeem_code(now, CLIENT_ID, &code, CODE_REDIRECT, &verifier);
                    note!(
                        self,
                        "code exchange answer lost; presented again: {}",
                        again.map_or("refused", |_| "granted")
                    );
                    self.observe_authority();
                    return self.code_login().2;
                }
                issued
            }
        }
    }

    /// The user approves a code request (a verifier of its own, as RFC 7636
    /// asks: 43 to 128 characters) and the app exchanges the code once.
    fn code_login(&mut self) -> (String, String, Option<crate::authority::Issued>) {
        let verifier = format!("{:0>43}", self.stats.logins_by_code);
        self.stats.logins_by_code += 1;
        let challenge = crate::authority::code::s256_challenge(&verifier);
        let code = self.authority.issue_code(self.now, CLIENT_ID, CODE_REDIRECT, &challenge);
        let issued = self.authority.redeem_code(self.now, CLIENT_ID, &code, CODE_REDIRECT, &verifier).ok();
        (code, verifier, issued)
    }

    /// The client crashes now and restarts from the store; a store write
    /// under way lands or not, as the world's seed decides.
    pub fn crash(&mut self) {
        self.crash_process(0);
    }

    pub(super) fn crash_process(&mut self, p: usize) {
        let landed = self.rng.chance(1, 2);
        self.crash_with_at(p, landed);
    }

    /// The client crashes now; a store write under way lands if `write_lands`.
    pub fn crash_with(&mut self, write_lands: bool) {
        self.crash_with_at(0, write_lands);
    }

    /// Process `p` crashes and restarts, as [`World::crash_with`]; the OS
    /// releases its lock.
    pub fn crash_with_at(&mut self, p: usize, write_lands: bool) {
        self.count_fault("crash");
        if let Some(write) = self.process_mut(p).in_flight_write.take().filter(|_| write_lands) {
            self.land(write);
        }
        let dead = self.process(p).incarnation;
        let fence = self.process(p).held_fence;
        let incarnation = self.next_incarnation;
        self.next_incarnation += 1;
        self.evidence.crashed = true;
        self.shared_monitor.crash(p);
        note_at!(self, p, "{} crash: incarnation {} starts", self.now, incarnation);
        let seed = self.rng.next_u64();
        let session = Self::boot(&self.config.session, seed, self.now, self.machine_wall());
        let clock = ProcessClock::boot(&self.config.session, self.now, self.monotonic(), self.machine_wall());
        let process = self.process_mut(p);
        process.machine.monitor.crash();
        process.retried.clear();
        process.incarnation = incarnation;
        process.machine.session = session;
        process.clock = clock;
        process.held_fence = None;
        process.paused_until = None;
        self.dead_lets_go(dead, fence);
        self.drain(p);
    }

    /// The client crashes right after carrying out its `count`-th command from now.
    pub fn crash_at_command(&mut self, count: u64) {
        self.crash_at_command = Some(self.commands_seen + count);
    }

    /// The client is suspended for `pause` (a laptop asleep): it handles
    /// nothing meanwhile, while the server's clock runs on.
    pub fn suspend(&mut self, pause: Duration) {
        // A second suspend while asleep can only prolong the sleep.
        let resume = self.now.saturating_add(pause).max(self.suspended_until.unwrap_or(MonoTime::ZERO));
        self.clock_jumped = true;
        self.evidence.suspended = true;
        self.asleep_since.get_or_insert(self.now);
        self.suspended_until = Some(resume);
        note!(self, "{} suspend until {resume}", self.now);
        self.schedule(resume, Pending::Resume);
    }

    /// The machine's wall clock is set back `by` (by hand, by NTP): stored
    /// expiries read through it look later than they are, until the boot
    /// clock says otherwise.
    pub fn step_wall_back(&mut self, by: Duration) {
        self.clock_jumped = true;
        self.wall_behind = self.wall_behind.saturating_add(by);
        note!(self, "{} wall clock set back {by:?}", self.now);
    }

    /// Nobody uses a sleeping client: runs until a suspended client resumes.
    pub(super) fn wake(&mut self) {
        if let Some(resume) = self.suspended_until {
            self.run_until(resume);
        }
    }
}
