//! The bridge's local spool: a bounded, durable FIFO of Kafka records kept
//! while Kafka is unreachable (docs/adr/0003-bridge-spool.md).
//!
//! On disk: a directory of segment files `{id:020}.seg`, each a sequence of
//! `[len: u32 LE][crc32 of body: u32 LE][body]`, and a `cursor` file naming
//! the first record not yet delivered (`{segment} {offset}`), replaced
//! atomically. Appends are made durable by [`Spool::sync`] (one fsync for a
//! whole group of appends); a torn tail left by a crash fails its CRC and is
//! cut off at the next open. Fully delivered segments are deleted.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

/// One Kafka record: where it goes and what it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub topic: String,
    pub key: Vec<u8>,
    pub payload: Vec<u8>,
}

impl Record {
    fn encode(&self, out: &mut Vec<u8>) -> anyhow::Result<()> {
        let topic = self.topic.as_bytes();
        let topic_len = u8::try_from(topic.len()).context("topic name longer than 255 bytes")?;
        let key_len = u16::try_from(self.key.len()).context("key longer than 65535 bytes")?;
        out.push(topic_len);
        out.extend_from_slice(topic);
        out.extend_from_slice(&key_len.to_le_bytes());
        out.extend_from_slice(&self.key);
        out.extend_from_slice(&self.payload);
        Ok(())
    }

    fn decode(body: &[u8]) -> anyhow::Result<Self> {
        let (&topic_len, rest) = body.split_first().context("empty spool record")?;
        let topic_len = usize::from(topic_len);
        if rest.len() < topic_len + 2 {
            bail!("spool record too short");
        }
        let topic =
            String::from_utf8(rest[..topic_len].to_vec()).context("spool topic not UTF-8")?;
        let rest = &rest[topic_len..];
        let key_len = usize::from(u16::from_le_bytes([rest[0], rest[1]]));
        let rest = &rest[2..];
        if rest.len() < key_len {
            bail!("spool record key truncated");
        }
        Ok(Self {
            topic,
            key: rest[..key_len].to_vec(),
            payload: rest[key_len..].to_vec(),
        })
    }
}

/// A place in the spool: segment id and byte offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub segment: u64,
    pub offset: u64,
}

const HEADER: usize = 8;
const CURSOR: &str = "cursor";

/// Appending would take the spool past its size limit.
#[derive(Debug, thiserror::Error)]
#[error("spool is full ({used} of {limit} bytes used)")]
pub struct SpoolFull {
    pub used: u64,
    pub limit: u64,
}

pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    segment_bytes: u64,
    /// Segment ids on disk, oldest first, with their lengths.
    segments: VecDeque<(u64, u64)>,
    writer: BufWriter<File>,
    cursor: Position,
    pending_records: u64,
}

impl Spool {
    /// Opens (or creates) the spool in `dir`, recovering from a crash.
    pub fn open(dir: &Path, max_bytes: u64, segment_bytes: u64) -> anyhow::Result<Self> {
        fs::create_dir_all(dir).with_context(|| format!("creating spool dir {}", dir.display()))?;
        let mut ids: Vec<u64> = fs::read_dir(dir)
            .with_context(|| format!("listing spool dir {}", dir.display()))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_suffix(".seg")?.parse().ok()
            })
            .collect();
        ids.sort_unstable();
        if ids.is_empty() {
            ids.push(0);
            File::create(segment_path(dir, 0)).context("creating first spool segment")?;
        }
        let mut segments = VecDeque::new();
        let last = ids[ids.len() - 1];
        for id in &ids {
            let path = segment_path(dir, *id);
            let len = if *id == last {
                // Only the tail can be torn: keep its valid prefix.
                let valid = scan_valid_len(&path)?;
                let file = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .context("opening tail segment")?;
                file.set_len(valid).context("truncating torn spool tail")?;
                file.sync_all().context("syncing truncated tail")?;
                valid
            } else {
                fs::metadata(&path).context("reading segment size")?.len()
            };
            segments.push_back((*id, len));
        }
        let first = segments.front().map(|s| s.0).unwrap_or(0);
        let mut cursor = read_cursor(dir)?.unwrap_or(Position {
            segment: first,
            offset: 0,
        });
        if cursor.segment < first {
            cursor = Position {
                segment: first,
                offset: 0,
            };
        }
        let file = OpenOptions::new()
            .append(true)
            .open(segment_path(dir, last))
            .context("opening spool tail for append")?;
        let mut spool = Self {
            dir: dir.to_path_buf(),
            max_bytes,
            segment_bytes,
            segments,
            writer: BufWriter::with_capacity(256 * 1024, file),
            cursor,
            pending_records: 0,
        };
        spool.pending_records = spool.count_from_cursor()?;
        Ok(spool)
    }

    pub fn is_empty(&self) -> bool {
        self.pending_records == 0
    }

    pub fn pending_records(&self) -> u64 {
        self.pending_records
    }

    /// Bytes on disk not yet delivered.
    pub fn pending_bytes(&self) -> u64 {
        let total: u64 = self
            .segments
            .iter()
            .filter(|(id, _)| *id >= self.cursor.segment)
            .map(|(_, len)| *len)
            .sum();
        total.saturating_sub(self.cursor.offset)
    }

    /// Appends a record (buffered: call [`Spool::sync`] before telling
    /// anyone it is safe).
    pub fn append(&mut self, record: &Record) -> anyhow::Result<Result<(), SpoolFull>> {
        let mut body = Vec::with_capacity(record.payload.len() + record.key.len() + 64);
        record.encode(&mut body)?;
        let size = (body.len() + HEADER) as u64;
        let used = self.pending_bytes();
        if used + size > self.max_bytes {
            return Ok(Err(SpoolFull {
                used,
                limit: self.max_bytes,
            }));
        }
        if self.tail_len() + size > self.segment_bytes && self.tail_len() > 0 {
            self.roll()?;
        }
        let len = u32::try_from(body.len()).context("spool record over 4 GiB")?;
        self.writer
            .write_all(&len.to_le_bytes())
            .context("writing spool")?;
        self.writer
            .write_all(&crc32fast::hash(&body).to_le_bytes())
            .context("writing spool")?;
        self.writer.write_all(&body).context("writing spool")?;
        if let Some(tail) = self.segments.back_mut() {
            tail.1 += size;
        }
        self.pending_records += 1;
        Ok(Ok(()))
    }

    /// Flushes and fsyncs what was appended.
    pub fn sync(&mut self) -> anyhow::Result<()> {
        self.writer.flush().context("flushing spool")?;
        self.writer
            .get_ref()
            .sync_data()
            .context("fsyncing spool")?;
        Ok(())
    }

    /// Reads up to `max` undelivered records from the cursor, returning them
    /// and the position after the last one (to [`Spool::commit`] once they
    /// are delivered).
    pub fn read_batch(&mut self, max: usize) -> anyhow::Result<(Vec<Record>, Position)> {
        self.writer.flush().context("flushing spool before read")?;
        let mut records = Vec::new();
        let mut pos = self.cursor;
        for &(id, len) in self
            .segments
            .iter()
            .filter(|(id, _)| *id >= self.cursor.segment)
        {
            if records.len() >= max {
                break;
            }
            let start = if id == self.cursor.segment {
                self.cursor.offset
            } else {
                0
            };
            if start >= len {
                pos = Position {
                    segment: id,
                    offset: len,
                };
                continue;
            }
            let mut file =
                File::open(segment_path(&self.dir, id)).context("opening spool segment")?;
            file.seek(SeekFrom::Start(start))
                .context("seeking spool segment")?;
            let mut reader = BufReader::new(file.take(len - start));
            let mut offset = start;
            while records.len() < max && offset < len {
                let body = read_record(&mut reader)?.with_context(|| {
                    format!("spool segment {id} ends inside a record at {offset}")
                })?;
                offset += (body.len() + HEADER) as u64;
                records.push(Record::decode(&body)?);
            }
            pos = Position {
                segment: id,
                offset,
            };
        }
        Ok((records, pos))
    }

    /// Marks everything before `pos` (and `count` records) as delivered.
    pub fn commit(&mut self, pos: Position, count: u64) -> anyhow::Result<()> {
        self.cursor = pos;
        self.pending_records = self.pending_records.saturating_sub(count);
        let tmp = self.dir.join("cursor.tmp");
        fs::write(&tmp, format!("{} {}\n", pos.segment, pos.offset))
            .context("writing spool cursor")?;
        File::open(&tmp)
            .and_then(|f| f.sync_all())
            .context("syncing spool cursor")?;
        fs::rename(&tmp, self.dir.join(CURSOR)).context("replacing spool cursor")?;
        // Segments wholly before the cursor are delivered: drop them. When the
        // spool is empty, start over in a fresh segment so disk use returns to zero.
        while self.segments.len() > 1 && self.segments[0].0 < self.cursor.segment {
            let (id, _) = self.segments[0];
            fs::remove_file(segment_path(&self.dir, id)).context("removing delivered segment")?;
            self.segments.pop_front();
        }
        if self.pending_records == 0 && self.tail_len() > 0 {
            self.roll()?;
            let (old, _) = self.segments[0];
            fs::remove_file(segment_path(&self.dir, old)).context("removing delivered segment")?;
            self.segments.pop_front();
            let tail = self.segments.back().map(|s| s.0).unwrap_or(0);
            self.cursor = Position {
                segment: tail,
                offset: 0,
            };
        }
        Ok(())
    }

    fn tail_len(&self) -> u64 {
        self.segments.back().map(|s| s.1).unwrap_or(0)
    }

    fn roll(&mut self) -> anyhow::Result<()> {
        self.sync()?;
        let next = self.segments.back().map(|s| s.0 + 1).unwrap_or(0);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(segment_path(&self.dir, next))
            .context("creating spool segment")?;
        self.writer = BufWriter::with_capacity(256 * 1024, file);
        self.segments.push_back((next, 0));
        Ok(())
    }

    fn count_from_cursor(&mut self) -> anyhow::Result<u64> {
        let mut count = 0;
        let saved = self.cursor;
        loop {
            let (records, pos) = self.read_batch(10_000)?;
            if records.is_empty() {
                break;
            }
            count += records.len() as u64;
            self.cursor = pos;
        }
        self.cursor = saved;
        Ok(count)
    }
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.seg"))
}

fn read_cursor(dir: &Path) -> anyhow::Result<Option<Position>> {
    let text = match fs::read_to_string(dir.join(CURSOR)) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err).context("reading spool cursor"),
    };
    let mut parts = text.split_whitespace().map(str::parse::<u64>);
    match (parts.next(), parts.next()) {
        (Some(Ok(segment)), Some(Ok(offset))) => Ok(Some(Position { segment, offset })),
        _ => bail!("spool cursor file is corrupt: {text:?}"),
    }
}

/// Reads one record body; `None` at a clean end, error on a bad CRC.
fn read_record(reader: &mut impl Read) -> anyhow::Result<Option<Vec<u8>>> {
    let mut header = [0u8; HEADER];
    match reader.read_exact(&mut header) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(err) => return Err(err).context("reading spool"),
    }
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    let mut body = vec![0u8; len];
    match reader.read_exact(&mut body) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(err) => return Err(err).context("reading spool"),
    }
    if crc32fast::hash(&body) != crc {
        bail!("spool record fails its checksum");
    }
    Ok(Some(body))
}

/// Length of the longest prefix of whole, intact records.
fn scan_valid_len(path: &Path) -> anyhow::Result<u64> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut reader = BufReader::new(file);
    let mut valid = 0u64;
    while let Ok(Some(body)) = read_record(&mut reader) {
        valid += (body.len() + HEADER) as u64;
    }
    Ok(valid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(i: u32) -> Record {
        Record {
            topic: "telemetry".into(),
            key: format!("dev-{}", i % 3).into_bytes(),
            payload: format!("payload {i}").into_bytes(),
        }
    }

    fn append_all(spool: &mut Spool, range: std::ops::Range<u32>) {
        for i in range {
            spool.append(&record(i)).unwrap().unwrap();
        }
        spool.sync().unwrap();
    }

    #[test]
    fn fifo_across_segments_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 1 << 20, 200).unwrap();
        append_all(&mut spool, 0..50);
        assert_eq!(spool.pending_records(), 50);
        let (first, pos) = spool.read_batch(20).unwrap();
        assert_eq!(first, (0..20).map(record).collect::<Vec<_>>());
        spool.commit(pos, 20).unwrap();
        drop(spool);

        let mut spool = Spool::open(dir.path(), 1 << 20, 200).unwrap();
        assert_eq!(spool.pending_records(), 30);
        let (rest, pos) = spool.read_batch(1000).unwrap();
        assert_eq!(rest, (20..50).map(record).collect::<Vec<_>>());
        spool.commit(pos, 30).unwrap();
        assert!(spool.is_empty());
        assert_eq!(spool.pending_bytes(), 0);
        // Delivered segments are gone: one empty segment is left.
        let files = fs::read_dir(dir.path()).unwrap().filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".seg")
        });
        assert_eq!(files.count(), 1);
        // And it keeps working after being emptied.
        append_all(&mut spool, 50..53);
        assert_eq!(
            spool.read_batch(10).unwrap().0,
            (50..53).map(record).collect::<Vec<_>>()
        );
    }

    #[test]
    fn uncommitted_records_are_redelivered() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 1 << 20, 1 << 20).unwrap();
        append_all(&mut spool, 0..5);
        let (batch, _pos) = spool.read_batch(5).unwrap();
        assert_eq!(batch.len(), 5);
        // Delivery failed: nothing committed, the same records come again.
        assert_eq!(spool.read_batch(5).unwrap().0, batch);
    }

    #[test]
    fn torn_tail_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 1 << 20, 1 << 20).unwrap();
        append_all(&mut spool, 0..3);
        drop(spool);
        let seg = segment_path(dir.path(), 0);
        let mut file = OpenOptions::new().append(true).open(&seg).unwrap();
        file.write_all(&[200, 0, 0, 0, 1, 2, 3, 4, 9, 9]).unwrap(); // a header and half a body
        drop(file);
        let mut spool = Spool::open(dir.path(), 1 << 20, 1 << 20).unwrap();
        assert_eq!(spool.pending_records(), 3);
        append_all(&mut spool, 3..4);
        assert_eq!(
            spool.read_batch(10).unwrap().0,
            (0..4).map(record).collect::<Vec<_>>()
        );
    }

    #[test]
    fn full_spool_refuses_instead_of_dropping() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 100, 1 << 20).unwrap();
        let mut accepted = 0;
        let mut refused = 0;
        for i in 0..10 {
            match spool.append(&record(i)).unwrap() {
                Ok(()) => accepted += 1,
                Err(full) => {
                    refused += 1;
                    assert_eq!(full.limit, 100);
                }
            }
        }
        spool.sync().unwrap();
        assert!(accepted > 0 && refused > 0);
        assert_eq!(spool.pending_records(), accepted);
        // Delivering frees room again.
        let (batch, pos) = spool.read_batch(100).unwrap();
        spool.commit(pos, batch.len() as u64).unwrap();
        assert!(spool.append(&record(99)).unwrap().is_ok());
    }
}
