//! The catalog's `BatchGetTitles` answer read straight off the wire into domain titles.
//!
//! A web homepage hydrates ~100 titles of 18 image renditions, ~7 cast names and ~3 genres each,
//! and decoding that answer was the costliest single step between the catalog's answer and the
//! BFF's own (callgrind: ~3.0M instructions per homepage; ~1,350 per image through prost's
//! generic repeated-message merge). This decoder walks the protobuf bytes once per message to
//! size every vector, then once more to fill domain values directly: one allocation per string,
//! none for growing vectors, no intermediate protobuf structs.
//!
//! It follows protobuf's decoding rules for `catalog.v1.Title` as prost does: fields in any order,
//! a repeated singular field's last value wins, unknown fields skipped by wire type (so a newer
//! catalog that adds fields still decodes), `int32` from a sign-extended varint, strings checked
//! for UTF-8. A known field with the wrong wire type, a truncated message, an over-long varint,
//! invalid UTF-8 or a group (proto2 only; a proto3 service never sends one) is an error, which the
//! call turns into `INTERNAL`, as tonic's own codec does. The conversion to domain values is that
//! of the prost path it replaces: images of an unknown or unspecified kind are dropped, negative
//! sizes and runtimes become 0. The request side is plain prost.

use bytes::Buf;
use prost::Message;
use tonic::{
    Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
};

use bff_schema::catalog::v1::{BatchGetTitlesRequest, ImageKind as PbImageKind};

use crate::domain::{Image, ImageKind, Title};

/// Why an answer could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum WireError {
    /// The message ends inside a field.
    #[error("message truncated")]
    Truncated,
    /// A varint longer than 10 bytes.
    #[error("varint longer than 10 bytes")]
    VarintTooLong,
    /// Field number 0, which protobuf reserves.
    #[error("field number 0")]
    FieldZero,
    /// Wire types 3 and 4 (groups) or 6 and 7 (undefined).
    #[error("unsupported wire type {0}")]
    WireType(u8),
    /// A known field with a wire type other than its declared one.
    #[error("field {field} of {message} has wire type {got}, expected {want}")]
    WrongWireType {
        message: &'static str,
        field: u32,
        got: u8,
        want: u8,
    },
    /// A string field that is not UTF-8.
    #[error("field {field} of {message} is not valid UTF-8")]
    Utf8 { message: &'static str, field: u32 },
}

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

/// A cursor over one message's bytes.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn varint(&mut self) -> Result<u64, WireError> {
        let mut value = 0u64;
        for (i, &b) in self.buf.iter().take(10).enumerate() {
            value |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                self.buf = &self.buf[i + 1..];
                return Ok(value);
            }
        }
        Err(if self.buf.len() < 10 {
            WireError::Truncated
        } else {
            WireError::VarintTooLong
        })
    }

    /// The next field's number and wire type.
    fn key(&mut self) -> Result<(u32, u8), WireError> {
        let key = self.varint()?;
        let field = u32::try_from(key >> 3).map_err(|_| WireError::VarintTooLong)?;
        if field == 0 {
            return Err(WireError::FieldZero);
        }
        Ok((field, (key & 7) as u8))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.buf.len() < n {
            return Err(WireError::Truncated);
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    /// A length-delimited field's bytes.
    fn len_delimited(&mut self) -> Result<&'a [u8], WireError> {
        let n = self.varint()?;
        self.take(usize::try_from(n).map_err(|_| WireError::Truncated)?)
    }

    /// Skips a field's value of wire type `wire`.
    fn skip(&mut self, wire: u8) -> Result<(), WireError> {
        match wire {
            VARINT => self.varint().map(drop),
            FIXED64 => self.take(8).map(drop),
            LEN => self.len_delimited().map(drop),
            FIXED32 => self.take(4).map(drop),
            other => Err(WireError::WireType(other)),
        }
    }
}

/// Field `field` of `message` must arrive with wire type `want`.
fn expect(message: &'static str, field: u32, got: u8, want: u8) -> Result<(), WireError> {
    if got == want {
        Ok(())
    } else {
        Err(WireError::WrongWireType {
            message,
            field,
            got,
            want,
        })
    }
}

fn string(message: &'static str, field: u32, bytes: &[u8]) -> Result<String, WireError> {
    std::str::from_utf8(bytes)
        .map(str::to_owned)
        .map_err(|_| WireError::Utf8 { message, field })
}

/// `int32` as protobuf encodes it: negative values are sign-extended to 64 bits, so the low 32
/// bits are the value.
fn int32(v: u64) -> i32 {
    v as u32 as i32
}

/// How many times each field number in `counted` occurs in `buf` (a pre-pass that sizes the
/// vectors of repeated fields).
fn count_fields<const N: usize>(buf: &[u8], counted: [u32; N]) -> Result<[usize; N], WireError> {
    let mut counts = [0; N];
    let mut r = Reader::new(buf);
    while !r.is_empty() {
        let (field, wire) = r.key()?;
        if let Some(i) = counted.iter().position(|&f| f == field) {
            counts[i] += 1;
        }
        r.skip(wire)?;
    }
    Ok(counts)
}

/// A `BatchGetTitlesResponse`: its titles (field 1), in the catalog's order. `missing_ids`
/// (field 2) is not read: an id the catalog does not know is simply absent from the batch.
pub(crate) fn decode_response(buf: &[u8]) -> Result<Vec<Title>, WireError> {
    const M: &str = "BatchGetTitlesResponse";
    let [n] = count_fields(buf, [1])?;
    let mut titles = Vec::with_capacity(n);
    let mut r = Reader::new(buf);
    while !r.is_empty() {
        match r.key()? {
            (1, wire) => {
                expect(M, 1, wire, LEN)?;
                titles.push(decode_title(r.len_delimited()?)?);
            }
            (_, wire) => r.skip(wire)?,
        }
    }
    Ok(titles)
}

fn decode_title(buf: &[u8]) -> Result<Title, WireError> {
    const M: &str = "Title";
    let [genres, cast, images] = count_fields(buf, [7, 8, 9])?;
    let mut t = Title {
        id: String::new(),
        name: String::new(),
        synopsis: String::new(),
        year: 0,
        maturity_rating: String::new(),
        runtime_minutes: 0,
        genres: Vec::with_capacity(genres),
        cast: Vec::with_capacity(cast),
        images: Vec::with_capacity(images),
    };
    let mut r = Reader::new(buf);
    while !r.is_empty() {
        let (field, wire) = r.key()?;
        match field {
            1 | 2 | 3 | 5 | 7 | 8 => {
                expect(M, field, wire, LEN)?;
                let s = string(M, field, r.len_delimited()?)?;
                match field {
                    1 => t.id = s,
                    2 => t.name = s,
                    3 => t.synopsis = s,
                    5 => t.maturity_rating = s,
                    7 => t.genres.push(s),
                    _ => t.cast.push(s),
                }
            }
            4 => {
                expect(M, field, wire, VARINT)?;
                t.year = int32(r.varint()?);
            }
            6 => {
                expect(M, field, wire, VARINT)?;
                t.runtime_minutes = u32::try_from(int32(r.varint()?)).unwrap_or(0);
            }
            9 => {
                expect(M, field, wire, LEN)?;
                if let Some(image) = decode_image(r.len_delimited()?)? {
                    t.images.push(image);
                }
            }
            _ => r.skip(wire)?,
        }
    }
    Ok(t)
}

/// An image, or `None` when its kind is unspecified or unknown to this BFF.
fn decode_image(buf: &[u8]) -> Result<Option<Image>, WireError> {
    const M: &str = "Image";
    let (mut kind, mut width, mut height, mut url) = (0, 0, 0, String::new());
    let mut r = Reader::new(buf);
    while !r.is_empty() {
        let (field, wire) = r.key()?;
        match field {
            1..=3 => {
                expect(M, field, wire, VARINT)?;
                let v = int32(r.varint()?);
                match field {
                    1 => kind = v,
                    2 => width = v,
                    _ => height = v,
                }
            }
            4 => {
                expect(M, field, wire, LEN)?;
                url = string(M, field, r.len_delimited()?)?;
            }
            _ => r.skip(wire)?,
        }
    }
    let kind = match PbImageKind::try_from(kind) {
        Ok(PbImageKind::Poster) => ImageKind::Poster,
        Ok(PbImageKind::Backdrop) => ImageKind::Backdrop,
        Ok(PbImageKind::Hero) => ImageKind::Hero,
        Ok(PbImageKind::Unspecified) | Err(_) => return Ok(None),
    };
    Ok(Some(Image {
        kind,
        width: u32::try_from(width).unwrap_or(0),
        height: u32::try_from(height).unwrap_or(0),
        url,
    }))
}

/// `BatchGetTitles` with the request encoded by prost and the answer decoded here.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TitlesCodec;

impl Codec for TitlesCodec {
    type Encode = BatchGetTitlesRequest;
    type Decode = Vec<Title>;
    type Encoder = RequestEncoder;
    type Decoder = TitlesDecoder;

    fn encoder(&mut self) -> RequestEncoder {
        RequestEncoder
    }

    fn decoder(&mut self) -> TitlesDecoder {
        TitlesDecoder
    }
}

/// Encodes the request with prost.
#[derive(Debug)]
pub(crate) struct RequestEncoder;

impl Encoder for RequestEncoder {
    type Item = BatchGetTitlesRequest;
    type Error = Status;

    fn encode(&mut self, item: Self::Item, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst)
            .map_err(|e| Status::internal(format!("encoding BatchGetTitlesRequest: {e}")))
    }
}

/// Decodes the answer into domain titles.
#[derive(Debug)]
pub(crate) struct TitlesDecoder;

impl Decoder for TitlesDecoder {
    type Item = Vec<Title>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<Title>>, Status> {
        let len = src.remaining();
        // tonic hands over one message in one contiguous buffer; copy only if it ever does not.
        let decoded = if src.chunk().len() >= len {
            let decoded = decode_response(&src.chunk()[..len]);
            src.advance(len);
            decoded
        } else {
            decode_response(&src.copy_to_bytes(len))
        };
        decoded
            .map(Some)
            .map_err(|e| Status::internal(format!("decoding BatchGetTitlesResponse: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use bff_schema::catalog::v1::{self as pb, BatchGetTitlesResponse};

    use super::*;

    fn pb_title(i: usize) -> pb::Title {
        pb::Title {
            id: format!("t{i}"),
            name: format!("Title {i} — ünïcode"),
            synopsis: "A long synopsis. ".repeat(20),
            year: 1990 + i as i32,
            maturity_rating: "PG-13".into(),
            runtime_minutes: 90 + i as i32,
            genres: vec!["Drama".into(), "Comedy".into(), "Sci-Fi".into()],
            cast: (0..7).map(|c| format!("Actor {i}.{c}")).collect(),
            images: [1, 2, 3]
                .into_iter()
                .flat_map(|kind| {
                    [160, 342, 1920].map(|w| pb::Image {
                        kind,
                        width: w,
                        height: w * 3 / 2,
                        url: format!("https://img/{i}/{kind}/w{w}.jpg"),
                    })
                })
                .collect(),
        }
    }

    /// The domain value the prost path made (the conversion this decoder replaces).
    fn via_prost(t: pb::Title) -> Title {
        Title {
            id: t.id,
            name: t.name,
            synopsis: t.synopsis,
            year: t.year,
            maturity_rating: t.maturity_rating,
            runtime_minutes: u32::try_from(t.runtime_minutes).unwrap_or(0),
            genres: t.genres,
            cast: t.cast,
            images: t
                .images
                .into_iter()
                .filter_map(|i| {
                    let kind = match PbImageKind::try_from(i.kind).ok()? {
                        PbImageKind::Poster => ImageKind::Poster,
                        PbImageKind::Backdrop => ImageKind::Backdrop,
                        PbImageKind::Hero => ImageKind::Hero,
                        PbImageKind::Unspecified => return None,
                    };
                    Some(Image {
                        kind,
                        width: u32::try_from(i.width).unwrap_or(0),
                        height: u32::try_from(i.height).unwrap_or(0),
                        url: i.url,
                    })
                })
                .collect(),
        }
    }

    fn check_same_as_prost(resp: BatchGetTitlesResponse) {
        let bytes = resp.encode_to_vec();
        let want: Vec<Title> = BatchGetTitlesResponse::decode(bytes.as_slice())
            .expect("prost decodes")
            .titles
            .into_iter()
            .map(via_prost)
            .collect();
        assert_eq!(decode_response(&bytes).expect("decodes"), want);
    }

    #[test]
    fn decodes_what_prost_decodes() {
        check_same_as_prost(BatchGetTitlesResponse {
            titles: (0..40).map(pb_title).collect(),
            missing_ids: vec!["nope".into(), "gone".into()],
        });
        check_same_as_prost(BatchGetTitlesResponse::default());
    }

    #[test]
    fn edge_values_convert_as_the_prost_path_did() {
        let mut t = pb_title(1);
        t.year = -44;
        t.runtime_minutes = -5;
        t.images[0].kind = 0; // unspecified: dropped
        t.images[1].kind = 99; // unknown to this BFF: dropped
        t.images[2].width = -1;
        t.images[3].height = i32::MAX;
        t.genres.clear();
        t.id = String::new();
        check_same_as_prost(BatchGetTitlesResponse {
            titles: vec![t, pb::Title::default()],
            missing_ids: vec![],
        });
    }

    /// Appends field `field` with wire type LEN holding `bytes`.
    fn put_len(buf: &mut Vec<u8>, field: u32, bytes: &[u8]) {
        prost::encoding::encode_key(field, prost::encoding::WireType::LengthDelimited, buf);
        prost::encoding::encode_varint(bytes.len() as u64, buf);
        buf.extend_from_slice(bytes);
    }

    #[test]
    fn unknown_fields_are_skipped_and_the_last_singular_value_wins() {
        use prost::encoding::{WireType, encode_key, encode_varint};
        let mut title = pb_title(3).encode_to_vec();
        // Unknown fields of every wire type, then a second `name` (the last one wins).
        encode_key(20, WireType::Varint, &mut title);
        encode_varint(u64::MAX, &mut title);
        encode_key(21, WireType::SixtyFourBit, &mut title);
        title.extend_from_slice(&[1; 8]);
        encode_key(22, WireType::ThirtyTwoBit, &mut title);
        title.extend_from_slice(&[2; 4]);
        put_len(&mut title, 23, b"\xff\xfe not UTF-8, but unknown");
        put_len(&mut title, 2, "Renamed".as_bytes());
        let mut resp = Vec::new();
        put_len(&mut resp, 1, &title);
        put_len(&mut resp, 9, b"a future top-level field");

        let mut want = via_prost(pb_title(3));
        want.name = "Renamed".into();
        assert_eq!(decode_response(&resp).expect("decodes"), vec![want.clone()]);
        // prost agrees.
        let prost = BatchGetTitlesResponse::decode(resp.as_slice()).expect("prost decodes");
        assert_eq!(via_prost(prost.titles[0].clone()), want);
    }

    #[test]
    fn malformed_answers_are_errors() {
        let good = BatchGetTitlesResponse {
            titles: vec![pb_title(1)],
            missing_ids: vec![],
        }
        .encode_to_vec();
        // Every truncation of a valid answer fails (none of them ends on a field boundary of
        // the outer message, which has a single field).
        for cut in 1..good.len() {
            assert!(decode_response(&good[..cut]).is_err(), "cut at {cut}");
        }

        let mut bad_utf8 = Vec::new();
        put_len(&mut bad_utf8, 2, b"\xff");
        let mut resp = Vec::new();
        put_len(&mut resp, 1, &bad_utf8);
        assert_eq!(
            decode_response(&resp),
            Err(WireError::Utf8 {
                message: "Title",
                field: 2
            })
        );

        // `year` (a varint) sent length-delimited.
        let mut wrong = Vec::new();
        put_len(&mut wrong, 4, b"1999");
        let mut resp = Vec::new();
        put_len(&mut resp, 1, &wrong);
        assert!(matches!(
            decode_response(&resp),
            Err(WireError::WrongWireType { field: 4, .. })
        ));

        assert_eq!(decode_response(&[0x0b]), Err(WireError::WireType(3)));
        assert_eq!(decode_response(&[0x00]), Err(WireError::FieldZero));
        let mut long = vec![0x08];
        long.extend([0x80; 10]);
        long.push(0x01);
        assert_eq!(decode_response(&long), Err(WireError::VarintTooLong));
        assert_eq!(decode_response(&[0x08, 0x80]), Err(WireError::Truncated));
    }
}
