//! A deadline for blocking system calls on the calling thread. The synchronous API waits for a
//! lock in the kernel on the caller's own thread, so that a handoff costs one wake-up (the kernel
//! wakes the caller) instead of two (a waiting thread, then the caller). But `flock(2)` and
//! `F_OFD_SETLKW` take no timeout. As util-linux `flock -w` does with `SIGALRM`, a timer sends
//! this thread a signal at the deadline; its handler does nothing and is installed without
//! `SA_RESTART`, so the blocked call fails with `EINTR` and the waiter looks at its deadline.
//! The file backend's waiting threads use it too, to wake from a wait for their turn in the
//! ticket queue and look for waiters ahead that do not move (file/mod.rs, `STALL_LOOK`).
//!
//! Hand-written on `libc` because `nix`'s timers take only the classic signals, and every classic
//! signal may mean something to Node or to the application; this uses a real-time signal that
//! nobody in the process handles. When none is free (or someone replaced our handler), `arm`
//! says so and the caller waits on a helper thread instead, as the asynchronous API does.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// After the deadline the signal repeats this often: a signal that lands just before the call
/// blocks (between the deadline check and the system call) interrupts nothing, the next one does.
const REPEAT: Duration = Duration::from_millis(20);

extern "C" fn interrupt_only(_: libc::c_int) {}

/// The real-time signal whose handler is ours, installed on first use, and the handler's address
/// as installed (compared later; Rust does not promise one address per function).
fn our_signal() -> Option<(libc::c_int, libc::sighandler_t)> {
  static SIGNAL: OnceLock<Option<(libc::c_int, libc::sighandler_t)>> = OnceLock::new();
  *SIGNAL.get_or_init(|| {
    let handler = interrupt_only as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SIGRTMIN + 0..2 are the ones other libraries pick first; start above them.
    let signal = (libc::SIGRTMIN() + 3..=libc::SIGRTMAX()).find(|&signal| {
      // SAFETY: sigaction with a zeroed, fully initialised struct; the handler is async-signal
      // safe (it does nothing).
      unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(signal, std::ptr::null(), &mut old) != 0
          || old.sa_sigaction != libc::SIG_DFL
        {
          return false;
        }
        let mut ours: libc::sigaction = std::mem::zeroed();
        ours.sa_sigaction = handler;
        ours.sa_flags = 0; // no SA_RESTART: the point is to interrupt
        libc::sigemptyset(&mut ours.sa_mask);
        libc::sigaction(signal, &ours, std::ptr::null_mut()) == 0
      }
    });
    signal.map(|signal| (signal, handler))
  })
}

/// Whether our handler is still the one installed (an application may have replaced it).
fn still_ours((signal, handler): (libc::c_int, libc::sighandler_t)) -> bool {
  // SAFETY: a query only (null new action).
  unsafe {
    let mut current: libc::sigaction = std::mem::zeroed();
    libc::sigaction(signal, std::ptr::null(), &mut current) == 0 && current.sa_sigaction == handler
  }
}

/// An armed timer: blocking calls of the thread that armed it fail with `EINTR` from the
/// deadline on. Disarmed (and the thread's signal mask restored) when dropped.
pub struct Alarm {
  timer: libc::timer_t,
  old_mask: libc::sigset_t,
}

/// Arms an alarm for `deadline` on this thread; `None` if no signal can be used for it.
pub fn arm(deadline: Instant) -> Option<Alarm> {
  let (signal, _) = our_signal().filter(|&ours| still_ours(ours))?;
  let first = deadline
    .saturating_duration_since(Instant::now())
    .max(Duration::from_nanos(1));
  // SAFETY: plain libc calls on zero-initialised structs that the calls fill in; the timer is
  // deleted by Drop, and the mask restored there.
  unsafe {
    let mut event: libc::sigevent = std::mem::zeroed();
    event.sigev_notify = libc::SIGEV_THREAD_ID;
    event.sigev_signo = signal;
    event.sigev_notify_thread_id = libc::gettid();
    let mut timer: libc::timer_t = std::mem::zeroed();
    if libc::timer_create(libc::CLOCK_MONOTONIC, &mut event, &mut timer) != 0 {
      return None;
    }
    let mut unblock: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut unblock);
    libc::sigaddset(&mut unblock, signal);
    let mut old_mask: libc::sigset_t = std::mem::zeroed();
    libc::pthread_sigmask(libc::SIG_UNBLOCK, &unblock, &mut old_mask);
    let alarm = Alarm { timer, old_mask };
    let schedule = libc::itimerspec {
      it_interval: timespec(REPEAT),
      it_value: timespec(first),
    };
    if libc::timer_settime(timer, 0, &schedule, std::ptr::null_mut()) != 0 {
      return None; // dropping `alarm` deletes the timer and restores the mask
    }
    Some(alarm)
  }
}

fn timespec(d: Duration) -> libc::timespec {
  libc::timespec {
    tv_sec: d.as_secs() as libc::time_t,
    tv_nsec: libc::c_long::from(d.subsec_nanos() as i32),
  }
}

impl Drop for Alarm {
  fn drop(&mut self) {
    // SAFETY: the timer was created by `arm` and is deleted once; a signal already sent is
    // delivered to the do-nothing handler, or stays pending if the restored mask blocks it.
    unsafe {
      libc::timer_delete(self.timer);
      libc::pthread_sigmask(libc::SIG_SETMASK, &self.old_mask, std::ptr::null_mut());
    }
  }
}

#[cfg(test)]
mod tests {
  use super::*;
  use std::fs::File;

  #[test]
  fn a_blocked_flock_returns_eintr_at_the_deadline() {
    let path = crate::test_support::temp_dir("alarm").join("x.lock");
    let holder = File::create(&path).unwrap();
    holder.lock().unwrap();
    let waiter = File::open(&path).unwrap();
    let started = Instant::now();
    let alarm = arm(started + Duration::from_millis(30)).expect("a free real-time signal");
    let outcome = waiter.lock();
    drop(alarm);
    let err = outcome.expect_err("the holder still holds it");
    assert_eq!(err.kind(), std::io::ErrorKind::Interrupted);
    assert!(started.elapsed() >= Duration::from_millis(30));
  }

  #[test]
  fn a_disarmed_alarm_interrupts_nothing_later() {
    let path = crate::test_support::temp_dir("alarm").join("x.lock");
    drop(arm(Instant::now()).expect("a free real-time signal"));
    // Had the timer outlived the drop, this thread would now be interrupted every REPEAT.
    let holder = File::create(&path).unwrap();
    std::thread::scope(|s| {
      holder.lock().unwrap();
      let released = s.spawn(|| {
        crate::test_support::wait_for_blocked_flock(&path);
        holder.unlock().unwrap();
      });
      File::open(&path).unwrap().lock().unwrap();
      released.join().unwrap();
    });
  }
}
