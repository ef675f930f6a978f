//! Group commit for asynchronous stores: what callers submit while a batch is being written
//! is written together in the next one, so under load one statement and one commit serve many
//! requests, and a lone request waits for nothing but its own write.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{Mutex, mpsc, oneshot};

type Job<I, O> = (I, oneshot::Sender<O>);

/// A queue of items written in batches by a few tasks.
#[derive(Debug)]
pub struct Batcher<I, O> {
    queue: mpsc::Sender<Job<I, O>>,
}

impl<I, O> Clone for Batcher<I, O> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
        }
    }
}

/// The batch was not written: its tasks are gone (the runtime is shutting down) or the writer
/// answered fewer items than it was given.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the batch writer is gone")]
pub struct BatcherGone;

impl<I: Send + 'static, O: Send + 'static> Batcher<I, O> {
    /// Starts `writers` tasks on the current runtime. Each takes what is queued (at least one
    /// item, at most `max_batch`), gives it to `write`, and answers each item with the output
    /// at its position. At most `queue` items wait; a caller past that waits for room, so a
    /// flood is slowed, never stored without bound. Each batch's size is recorded in the
    /// `store_batch_size` histogram, and the time its write took in `store_batch_seconds`, both
    /// under the label `batch="{name}"`. Must be called within a Tokio runtime.
    pub fn spawn<F, Fut>(
        name: &'static str,
        writers: usize,
        max_batch: usize,
        queue: usize,
        write: F,
    ) -> Self
    where
        F: Fn(Vec<I>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<O>> + Send + 'static,
    {
        Self::spawn_on(
            &tokio::runtime::Handle::current(),
            name,
            writers,
            max_batch,
            queue,
            write,
        )
    }

    /// As [`Batcher::spawn`], with the writers on `runtime` (a store's own I/O thread).
    pub fn spawn_on<F, Fut>(
        runtime: &tokio::runtime::Handle,
        name: &'static str,
        writers: usize,
        max_batch: usize,
        queue: usize,
        write: F,
    ) -> Self
    where
        F: Fn(Vec<I>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<O>> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel::<Job<I, O>>(queue.max(1));
        let rx = Arc::new(Mutex::new(rx));
        let write = Arc::new(write);
        for _ in 0..writers.max(1) {
            let (rx, write) = (rx.clone(), write.clone());
            runtime.spawn(async move {
                while let Some(batch) = next_batch(&rx, max_batch.max(1)).await {
                    let (items, replies): (Vec<I>, Vec<oneshot::Sender<O>>) =
                        batch.into_iter().unzip();
                    metrics::histogram!("store_batch_size", "batch" => name)
                        .record(items.len() as f64);
                    let started = std::time::Instant::now();
                    let outputs = write(items).await;
                    metrics::histogram!("store_batch_seconds", "batch" => name)
                        .record(started.elapsed().as_secs_f64());
                    // An output missing for an item drops its reply: that caller sees
                    // `BatcherGone`.
                    for (reply, output) in replies.into_iter().zip(outputs) {
                        let _ = reply.send(output);
                    }
                }
            });
        }
        Self { queue: tx }
    }

    /// Queues `item` and waits for its output.
    pub async fn submit(&self, item: I) -> Result<O, BatcherGone> {
        let (reply, output) = oneshot::channel();
        self.queue
            .send((item, reply))
            .await
            .map_err(|_| BatcherGone)?;
        output.await.map_err(|_| BatcherGone)
    }
}

/// One writer's next batch: waits for an item, then takes what else is queued, up to `max`.
/// `None` once every sender is gone.
async fn next_batch<I, O>(
    rx: &Mutex<mpsc::Receiver<Job<I, O>>>,
    max: usize,
) -> Option<Vec<Job<I, O>>> {
    let mut rx = rx.lock().await;
    let first = rx.recv().await?;
    let mut batch = Vec::with_capacity(max.min(rx.len() + 1));
    batch.push(first);
    while batch.len() < max {
        match rx.try_recv() {
            Ok(job) => batch.push(job),
            Err(_) => break,
        }
    }
    Some(batch)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn spec11_items_submitted_together_are_written_in_fewer_batches_and_each_gets_its_own_answer()
     {
        let batches = Arc::new(AtomicUsize::new(0));
        let counted = batches.clone();
        let batcher = Batcher::spawn("test", 1, 64, 1024, move |items: Vec<u32>| {
            counted.fetch_add(1, Ordering::SeqCst);
            async move {
                // A slow write, so that what arrives meanwhile queues up.
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                items.into_iter().map(|i| i * 2).collect::<Vec<_>>()
            }
        });
        let calls: Vec<_> = (0..200u32)
            .map(|i| {
                let batcher = batcher.clone();
                tokio::spawn(async move { (i, batcher.submit(i).await.unwrap()) })
            })
            .collect();
        for call in calls {
            let (i, doubled) = call.await.unwrap();
            assert_eq!(doubled, i * 2);
        }
        let n = batches.load(Ordering::SeqCst);
        assert!((200 / 64..200).contains(&n), "{n} batches for 200 items");
    }

    #[tokio::test]
    async fn spec11_an_item_the_writer_did_not_answer_is_an_error_not_a_hang() {
        let batcher = Batcher::spawn("test", 1, 8, 8, |_items: Vec<u32>| async {
            Vec::<u32>::new()
        });
        assert!(batcher.submit(1).await.is_err());
    }
}
