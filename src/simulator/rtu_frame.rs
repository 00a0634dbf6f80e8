//! Encoding Modbus RTU reply frames, for the simulator's late-reply fault: a complete, valid
//! frame sent after the master has given up. Pure.

use tokio_modbus::{ExceptionCode, Response};

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
    let crc = crc16(&f);
    f.extend(crc.to_le_bytes());
    Some(f)
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
}
