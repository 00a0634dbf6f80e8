//! Encoding Modbus RTU frames: replies, for the simulator's late-reply fault (a complete,
//! valid frame sent after the master has given up), and requests, for the `echo` quirk on a
//! serial port (the request as the master sent it). Pure.

use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};

/// CRC-16/MODBUS (poly 0xA001 reflected, init 0xFFFF), appended low byte first.
pub fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0xFFFF;
    for &b in data {
        crc ^= u16::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
        }
    }
    crc
}

fn pack_bits(bits: &[bool]) -> Vec<u8> {
    let mut out = vec![0u8; bits.len().div_ceil(8)];
    for (i, &b) in bits.iter().enumerate() {
        if b {
            out[i / 8] |= 1 << (i % 8);
        }
    }
    out
}

/// The RTU frame (unit, PDU, CRC) of a reply; `None` for replies the simulator never makes.
pub fn encode_reply(
    unit: u8,
    function: u8,
    reply: &Result<Response, ExceptionCode>,
) -> Option<Vec<u8>> {
    let mut f = vec![unit];
    match reply {
        Err(code) => f.extend([function | 0x80, u8::from(*code)]),
        Ok(Response::ReadCoils(bits)) | Ok(Response::ReadDiscreteInputs(bits)) => {
            let bytes = pack_bits(bits);
            f.extend([function, bytes.len() as u8]);
            f.extend(bytes);
        }
        Ok(Response::ReadInputRegisters(words)) | Ok(Response::ReadHoldingRegisters(words)) => {
            f.extend([function, (words.len() * 2) as u8]);
            f.extend(words.iter().flat_map(|w| w.to_be_bytes()));
        }
        Ok(Response::WriteSingleCoil(a, v)) => {
            f.push(function);
            f.extend(a.to_be_bytes());
            f.extend(if *v { [0xFF, 0x00] } else { [0x00, 0x00] });
        }
        Ok(Response::WriteSingleRegister(a, v)) => {
            f.push(function);
            f.extend(a.to_be_bytes());
            f.extend(v.to_be_bytes());
        }
        Ok(Response::WriteMultipleCoils(a, n)) | Ok(Response::WriteMultipleRegisters(a, n)) => {
            f.push(function);
            f.extend(a.to_be_bytes());
            f.extend(n.to_be_bytes());
        }
        Ok(_) => return None,
    }
    Some(with_crc(f))
}

/// Append the CRC (low byte first, Modbus over Serial Line 2.5.1.2) to `frame`.
fn with_crc(mut frame: Vec<u8>) -> Vec<u8> {
    let crc = crc16(&frame);
    frame.extend(crc.to_le_bytes());
    frame
}

/// The RTU frame (unit, PDU, CRC) of a request, byte for byte what the master sent (a frame
/// that decoded has one encoding); `None` for the functions the simulator cannot re-encode
/// (device identification).
pub fn encode_request(req: &SlaveRequest<'_>) -> Option<Vec<u8>> {
    let mut f = vec![req.slave, req.request.function_code().value()];
    let words = |f: &mut Vec<u8>, ws: &[u16]| f.extend(ws.iter().flat_map(|w| w.to_be_bytes()));
    match &req.request {
        Request::ReadCoils(a, n)
        | Request::ReadDiscreteInputs(a, n)
        | Request::ReadInputRegisters(a, n)
        | Request::ReadHoldingRegisters(a, n) => words(&mut f, &[*a, *n]),
        Request::WriteSingleCoil(a, v) => words(&mut f, &[*a, if *v { 0xFF00 } else { 0 }]),
        Request::WriteSingleRegister(a, v) => words(&mut f, &[*a, *v]),
        Request::WriteMultipleCoils(a, bits) => {
            let bytes = pack_bits(bits);
            words(&mut f, &[*a, u16::try_from(bits.len()).ok()?]);
            f.push(u8::try_from(bytes.len()).ok()?);
            f.extend(bytes);
        }
        Request::WriteMultipleRegisters(a, ws) => {
            words(&mut f, &[*a, u16::try_from(ws.len()).ok()?]);
            f.push(u8::try_from(ws.len() * 2).ok()?);
            words(&mut f, ws);
        }
        Request::MaskWriteRegister(a, and, or) => words(&mut f, &[*a, *and, *or]),
        Request::ReadWriteMultipleRegisters(ra, rn, wa, ws) => {
            words(&mut f, &[*ra, *rn, *wa, u16::try_from(ws.len()).ok()?]);
            f.push(u8::try_from(ws.len() * 2).ok()?);
            words(&mut f, ws);
        }
        Request::ReportServerId => {}
        Request::Custom(_, data) => f.extend(data.iter()),
        Request::ReadDeviceIdentification(..) => return None,
    }
    Some(with_crc(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_of_a_known_frame() {
        // Read 2 holding registers at 0 from unit 1: 01 03 00 00 00 02, CRC C4 0B.
        assert_eq!(
            crc16(&[0x01, 0x03, 0x00, 0x00, 0x00, 0x02]).to_le_bytes(),
            [0xC4, 0x0B]
        );
    }

    #[test]
    fn register_and_exception_replies() {
        let f = encode_reply(
            2,
            4,
            &Ok(Response::ReadInputRegisters(vec![0x00DE, 0x0001])),
        )
        .unwrap();
        assert_eq!(&f[..7], &[2, 4, 4, 0x00, 0xDE, 0x00, 0x01]);
        assert_eq!(crc16(&f[..7]).to_le_bytes(), [f[7], f[8]]);
        let f = encode_reply(1, 3, &Err(ExceptionCode::IllegalDataAddress)).unwrap();
        assert_eq!(&f[..3], &[1, 0x83, 2]);
        let f = encode_reply(1, 1, &Ok(Response::ReadCoils(vec![true, false, true]))).unwrap();
        assert_eq!(&f[..4], &[1, 1, 1, 0b101]);
    }

    #[test]
    fn request_frames_are_what_a_master_sends() {
        let req = |request| SlaveRequest { slave: 1, request };
        // The frame of `crc_of_a_known_frame`.
        assert_eq!(
            encode_request(&req(Request::ReadHoldingRegisters(0, 2))).unwrap(),
            [0x01, 0x03, 0x00, 0x00, 0x00, 0x02, 0xC4, 0x0B]
        );
        let f = encode_request(&req(Request::WriteSingleCoil(1, true))).unwrap();
        assert_eq!(&f[..6], &[1, 5, 0, 1, 0xFF, 0x00]);
        let f = encode_request(&req(Request::WriteMultipleRegisters(
            2,
            vec![0x0102, 0x0304].into(),
        )))
        .unwrap();
        assert_eq!(&f[..11], &[1, 0x10, 0, 2, 0, 2, 4, 1, 2, 3, 4]);
        assert_eq!(crc16(&f[..11]).to_le_bytes(), [f[11], f[12]]);
        let f = encode_request(&req(Request::WriteMultipleCoils(
            0,
            vec![true, false, true].into(),
        )))
        .unwrap();
        assert_eq!(&f[..8], &[1, 0x0F, 0, 0, 0, 3, 1, 0b101]);
    }
}
