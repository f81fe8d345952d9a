//! A device is removed while I/O callbacks run, three ways:
//!
//! 1. "Unload or fail": `unregister_timeout` gives up because a long I/O is in flight, reports
//!    it, and the device stays usable.
//! 2. Reversible removal: `prepare_unregister` closes the device to new I/O at once; it is
//!    found busy, so the removal is undone and the device is live again.
//! 3. Removal: `unregister` waits for the I/O in flight, then the driver frees the device.
//!
//! ```text
//! cargo run --example hotplug
//! ```

use drainable::Registry;
use std::error::Error;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// A block device as the I/O path sees it.
struct Device {
    name: &'static str,
    /// Driver state freed with the device (a DMA buffer, say).
    buffer: Box<[u8; 4096]>,
    completed: AtomicU64,
}

impl Device {
    /// One I/O request: "transfers" for `duration`, then completes.
    fn io(&self, duration: Duration) {
        thread::sleep(duration);
        assert_eq!(self.buffer.len(), 4096, "I/O on a freed device");
        self.completed.fetch_add(1, Relaxed);
    }
}

fn main() -> Result<(), Box<dyn Error>> {
    let start = Instant::now();
    let log = |who: &str, msg: String| {
        println!("[{:>6.3}s] {who:<8} {msg}", start.elapsed().as_secs_f64());
    };
    let registry = Registry::new();
    let devices = &registry;

    let nvme0 = devices.register(Device {
        name: "nvme0",
        buffer: Box::new([0; 4096]),
        completed: AtomicU64::new(0),
    });
    log("driver", "nvme0 registered".into());

    // Submits one I/O to every device it can reach; returns how many it reached.
    let submit = |who: &str, duration: Duration| {
        let mut reached = 0;
        devices.for_each(|d: &Device| {
            log(
                who,
                format!("I/O to {} ({} ms)", d.name, duration.as_millis()),
            );
            d.io(duration);
            reached += 1;
        });
        if reached == 0 {
            log(who, "I/O refused: no device".into());
        }
        reached
    };

    thread::scope(|s| -> Result<(), Box<dyn Error>> {
        // 1. Unload or fail: a long I/O is in flight when the device is pulled.
        println!("\n-- 1. surprise removal with a deadline, during a long I/O --");
        let (started_tx, started_rx) = mpsc::channel();
        let long_io = s.spawn(move || {
            let io = devices.iter().next().expect("nvme0 is registered");
            log("io", format!("long read on {} started (800 ms)", io.name));
            started_tx.send(()).unwrap();
            io.io(Duration::from_millis(800));
            log("io", "long read finished".into());
        });
        started_rx.recv()?;
        log(
            "hotplug",
            "unregister_timeout(nvme0, 200 ms): unload or fail".into(),
        );
        let t = Instant::now();
        let err = match devices.unregister_timeout(nvme0, Duration::from_millis(200)) {
            Ok(_) => return Err("removed with a long I/O in flight".into()),
            Err(err) => err,
        };
        log(
            "hotplug",
            format!(
                "failed after {} ms: {err} ({}); {} I/O outstanding",
                t.elapsed().as_millis(),
                err.source().map_or(String::new(), ToString::to_string),
                err.outstanding()
            ),
        );
        if submit("new-io", Duration::from_millis(1)) != 1 {
            return Err("the device should be live again after a failed removal".into());
        }
        log(
            "hotplug",
            "nvme0 is live again; the driver keeps its registration".into(),
        );
        let nvme0 = err.into_registration();
        long_io.join().unwrap();

        // 2. Reversible removal: closed at once, found busy, undone.
        println!("\n-- 2. prepare the removal, find the device busy, undo --");
        let (started_tx, started_rx) = mpsc::channel();
        let io = s.spawn(move || {
            let io = devices.iter().next().expect("nvme0 is registered");
            log("io", format!("write on {} started (300 ms)", io.name));
            started_tx.send(()).unwrap();
            io.io(Duration::from_millis(300));
            log("io", "write finished".into());
        });
        started_rx.recv()?;
        let pending = devices.prepare_unregister(nvme0);
        log(
            "hotplug",
            "prepare_unregister(nvme0): closed to new I/O".into(),
        );
        if submit("new-io", Duration::from_millis(1)) != 0 {
            return Err("new I/O reached a device being removed".into());
        }
        let busy = pending.outstanding();
        log("hotplug", format!("{busy} I/O in flight: busy, so undo"));
        if busy == 0 {
            return Err("the write should still be in flight".into());
        }
        let nvme0 = pending.undo();
        if submit("new-io", Duration::from_millis(1)) != 1 {
            return Err("the device should be live again after undo".into());
        }
        log("hotplug", "nvme0 is live again".into());
        io.join().unwrap();

        // 3. Removal: waits for the I/O in flight, then frees the device.
        println!("\n-- 3. remove: wait for the I/O in flight, then free --");
        let (started_tx, started_rx) = mpsc::channel();
        let io = s.spawn(move || {
            let io = devices.iter().next().expect("nvme0 is registered");
            log("io", format!("flush on {} started (100 ms)", io.name));
            started_tx.send(()).unwrap();
            io.io(Duration::from_millis(100));
            log("io", "flush finished".into());
        });
        started_rx.recv()?;
        log("hotplug", "unregister(nvme0)".into());
        let t = Instant::now();
        let device = devices.unregister(nvme0);
        log(
            "hotplug",
            format!(
                "removed after {} ms (waited for the flush); {} I/O completed on {}",
                t.elapsed().as_millis(),
                device.completed.load(Relaxed),
                device.name
            ),
        );
        drop(device); // free the driver's buffer: no I/O can still be using it
        log("driver", "nvme0 freed".into());
        if submit("new-io", Duration::from_millis(1)) != 0 {
            return Err("I/O reached a removed device".into());
        }
        io.join().unwrap();
        Ok(())
    })?;

    println!("\nok: failed removal kept the device, undo restored it, removal waited then freed");
    Ok(())
}
