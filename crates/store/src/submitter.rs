//! Group commit for submissions: concurrent submissions wait for the one transaction in
//! flight, then go in together in the next. Under load this turns one commit per execution
//! into one commit per batch; alone, a submission waits for nobody.

use crate::{NewExecution, Result, Store, StoreError, Submitted};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// Most submissions committed in one transaction.
const MAX_BATCH: usize = 256;

type Request = (NewExecution, oneshot::Sender<Result<Submitted>>);

#[derive(Clone)]
pub struct Submitter {
    queue: mpsc::Sender<Request>,
}

impl Submitter {
    /// Starts the batching task; it ends when every `Submitter` clone is dropped.
    pub fn spawn(store: Arc<Store>) -> Submitter {
        let (queue, mut rx) = mpsc::channel::<Request>(4 * MAX_BATCH);
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(r) => batch.push(r),
                        Err(_) => break,
                    }
                }
                let items: Vec<NewExecution> = batch.iter().map(|(n, _)| n.clone()).collect();
                match store.submit_batch(&items).await {
                    Ok(results) => {
                        for ((_, reply), result) in batch.into_iter().zip(results) {
                            let _ = reply.send(result);
                        }
                    }
                    Err(e) if batch.len() == 1 && !matches!(e, StoreError::Conflict(_)) => {
                        if let Some((_, reply)) = batch.pop() {
                            let _ = reply.send(Err(e));
                        }
                    }
                    // A batch failed as a whole (a key raced another node's insert, say):
                    // nothing of it was written; each goes alone so one cannot sink the rest.
                    Err(_) => {
                        for (new, reply) in batch {
                            let _ = reply.send(store.submit(&new).await);
                        }
                    }
                }
            }
        });
        Submitter { queue }
    }

    pub async fn submit(&self, new: NewExecution) -> Result<Submitted> {
        let (reply, rx) = oneshot::channel();
        self.queue
            .send((new, reply))
            .await
            .map_err(|_| StoreError::Internal("the submission queue has stopped".into()))?;
        rx.await.map_err(|_| StoreError::Internal("the submission queue dropped a request".into()))?
    }
}
