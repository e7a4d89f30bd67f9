//! Safe arithmetic for the agent's `calculator` tool.
//!
//! A small recursive-descent parser over `f64`: numbers (`12`, `3.5`, `.5`, `6.02e23`), the
//! operators `+ - * / % ^`, parentheses, unary signs, the functions `sqrt abs round floor ceil ln
//! log10 exp sin cos tan min max` and the constants `pi` and `e`. Nothing else is accepted: no
//! variables, no thousands separators (`1_000` and `1,000` are errors; `,` only separates
//! function arguments), no implicit multiplication (`2pi`). `^` is right-associative and binds
//! tighter than a unary sign, so `-2^2` is `-4` and `2^3^2` is `512`. Names are matched
//! case-insensitively (`PI`, `Sqrt`).
//!
//! Inputs are bounded ([`MAX_EXPRESSION_BYTES`], [`MAX_NESTING`]) so a model cannot make the
//! server recurse or loop without limit, and every error says what went wrong and at which byte
//! position, so the model can correct its call.

/// The longest expression [`evaluate`] accepts, in bytes.
pub const MAX_EXPRESSION_BYTES: usize = 1000;

/// How deeply parentheses, function calls, signs and exponents may nest.
pub const MAX_NESTING: usize = 64;

/// Why an expression could not be evaluated; positions are byte offsets into the expression.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CalcError {
    /// The expression is longer than [`MAX_EXPRESSION_BYTES`].
    #[error("expression is {length} bytes long; at most {max} are allowed")]
    TooLong {
        /// Length of the rejected expression in bytes.
        length: usize,
        /// The limit.
        max: usize,
    },
    /// The expression is empty or only whitespace.
    #[error("expression is empty")]
    Empty,
    /// A character that is not part of the grammar.
    #[error("unexpected character `{character}` at position {position}")]
    UnexpectedCharacter {
        /// The offending character.
        character: char,
        /// Byte offset of the character.
        position: usize,
    },
    /// A token in a place where the grammar does not allow it.
    #[error("unexpected `{token}` at position {position}")]
    UnexpectedToken {
        /// The offending token as written.
        token: String,
        /// Byte offset of the token.
        position: usize,
    },
    /// The expression stops where more was expected (e.g. `2 +`).
    #[error("unexpected end of expression at position {position}; expected {expected}")]
    UnexpectedEnd {
        /// What the parser was looking for.
        expected: &'static str,
        /// Byte offset of the end.
        position: usize,
    },
    /// A malformed or out-of-range number literal.
    #[error("invalid number `{text}` at position {position}")]
    InvalidNumber {
        /// The literal as written.
        text: String,
        /// Byte offset of the literal.
        position: usize,
    },
    /// A name that is neither a known function nor a known constant.
    #[error(
        "unknown name `{name}` at position {position}; known functions: sqrt, abs, round, floor, ceil, ln, log10, \
         exp, sin, cos, tan, min, max; constants: pi, e"
    )]
    UnknownName {
        /// The name as written.
        name: String,
        /// Byte offset of the name.
        position: usize,
    },
    /// A function called with the wrong number of arguments.
    #[error("`{function}` at position {position} takes {expected} argument(s), got {found}")]
    WrongArgumentCount {
        /// The function name.
        function: String,
        /// The accepted count, in words (`1`, `at least 1`).
        expected: &'static str,
        /// How many were given.
        found: usize,
        /// Byte offset of the function name.
        position: usize,
    },
    /// Nesting deeper than [`MAX_NESTING`].
    #[error("expression nests deeper than {max} levels at position {position}")]
    TooDeep {
        /// The limit.
        max: usize,
        /// Byte offset where the limit was crossed.
        position: usize,
    },
    /// Division or remainder by zero.
    #[error("division by zero at position {position}")]
    DivisionByZero {
        /// Byte offset of the `/` or `%` operator.
        position: usize,
    },
    /// An operation whose result is infinite or not a number (`sqrt(-1)`, `ln(0)`, `10^999`).
    #[error("`{operation}` at position {position} gives a result that is not a finite number")]
    NotFinite {
        /// The operator or function.
        operation: String,
        /// Byte offset of the operator or function name.
        position: usize,
    },
}

/// Evaluates an arithmetic expression such as `(1 + 2) * sqrt(16) - 2^-1`.
pub fn evaluate(expression: &str) -> Result<f64, CalcError> {
    if expression.len() > MAX_EXPRESSION_BYTES {
        return Err(CalcError::TooLong { length: expression.len(), max: MAX_EXPRESSION_BYTES });
    }
    let tokens = tokenize(expression)?;
    if tokens.is_empty() {
        return Err(CalcError::Empty);
    }
    let mut parser = Parser { tokens, index: 0, depth: 0, end: expression.len() };
    let value = parser.expression()?;
    if let Some(token) = parser.peek() {
        return Err(token.unexpected());
    }
    check_finite(value, "expression", 0)
}

/// Formats a result for a model: integers without `.0`, other values with at most 12 significant
/// digits and no trailing zeros (`0.1 + 0.2` gives `0.3`); very large or small magnitudes use
/// exponent notation (`1.5e-9`).
pub fn format_number(value: f64) -> String {
    if value.is_nan() {
        return "NaN".to_string();
    }
    if value.is_infinite() {
        return if value > 0.0 { "inf" } else { "-inf" }.to_string();
    }
    if value == 0.0 {
        return "0".to_string();
    }
    // Below 2^53 every integer is exact, so it can be printed digit for digit.
    const EXACT_INTEGER_LIMIT: f64 = 9_007_199_254_740_992.0;
    let magnitude = value.abs();
    if value.fract() == 0.0 && magnitude < EXACT_INTEGER_LIMIT {
        return format!("{value:.0}");
    }
    if !(1e-6..1e15).contains(&magnitude) {
        let text = format!("{value:.11e}");
        return match text.split_once('e') {
            Some((mantissa, exponent)) => format!("{}e{exponent}", trim_fraction(mantissa)),
            None => text,
        };
    }
    let integer_digits = magnitude.log10().floor() as i32 + 1;
    let decimals = (12 - integer_digits).clamp(0, 20) as usize;
    trim_fraction(&format!("{value:.decimals$}")).to_string()
}

fn trim_fraction(text: &str) -> &str {
    if text.contains('.') { text.trim_end_matches('0').trim_end_matches('.') } else { text }
}

fn check_finite(value: f64, operation: &str, position: usize) -> Result<f64, CalcError> {
    if value.is_finite() { Ok(value) } else { Err(CalcError::NotFinite { operation: operation.to_string(), position }) }
}

#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Number(f64),
    Name(String),
    Operator(char),
    Open,
    Close,
    Comma,
}

#[derive(Debug, Clone)]
struct Token {
    kind: Kind,
    text: String,
    position: usize,
}

impl Token {
    fn unexpected(&self) -> CalcError {
        CalcError::UnexpectedToken { token: self.text.clone(), position: self.position }
    }
}

fn tokenize(expression: &str) -> Result<Vec<Token>, CalcError> {
    let bytes = expression.as_bytes();
    let mut tokens = Vec::new();
    let mut index = 0;
    while index < bytes.len() {
        let byte = bytes[index];
        let start = index;
        let kind = match byte {
            b' ' | b'\t' | b'\n' | b'\r' => {
                index += 1;
                continue;
            }
            b'0'..=b'9' | b'.' => {
                index = scan_number(bytes, index);
                let text = &expression[start..index];
                let invalid = || CalcError::InvalidNumber { text: text.to_string(), position: start };
                let value: f64 = text.parse().map_err(|_| invalid())?;
                if !value.is_finite() {
                    return Err(invalid());
                }
                // `1_000` or `2.5.1` would otherwise surface as a confusing error on the next token.
                if let Some(&next) = bytes.get(index)
                    && (next == b'_' || next == b'.' || next.is_ascii_alphanumeric())
                {
                    let end = scan_word(bytes, index);
                    return Err(CalcError::InvalidNumber { text: expression[start..end].to_string(), position: start });
                }
                Kind::Number(value)
            }
            b'a'..=b'z' | b'A'..=b'Z' | b'_' => {
                index = scan_word(bytes, index);
                Kind::Name(expression[start..index].to_ascii_lowercase())
            }
            b'+' | b'-' | b'*' | b'/' | b'%' | b'^' => {
                index += 1;
                Kind::Operator(char::from(byte))
            }
            b'(' => {
                index += 1;
                Kind::Open
            }
            b')' => {
                index += 1;
                Kind::Close
            }
            b',' => {
                index += 1;
                Kind::Comma
            }
            _ => {
                let character = expression[start..].chars().next().unwrap_or('\u{fffd}');
                return Err(CalcError::UnexpectedCharacter { character, position: start });
            }
        };
        tokens.push(Token { kind, text: expression[start..index].to_string(), position: start });
    }
    Ok(tokens)
}

/// Scans `digits [. digits] [e [+-] digits]`, taking an exponent only when digits follow it.
fn scan_number(bytes: &[u8], mut index: usize) -> usize {
    while index < bytes.len() && bytes[index].is_ascii_digit() {
        index += 1;
    }
    if index < bytes.len() && bytes[index] == b'.' {
        index += 1;
        while index < bytes.len() && bytes[index].is_ascii_digit() {
            index += 1;
        }
    }
    if index < bytes.len() && (bytes[index] == b'e' || bytes[index] == b'E') {
        let mut exponent = index + 1;
        if exponent < bytes.len() && (bytes[exponent] == b'+' || bytes[exponent] == b'-') {
            exponent += 1;
        }
        if exponent < bytes.len() && bytes[exponent].is_ascii_digit() {
            index = exponent;
            while index < bytes.len() && bytes[index].is_ascii_digit() {
                index += 1;
            }
        }
    }
    index
}

fn scan_word(bytes: &[u8], mut index: usize) -> usize {
    while index < bytes.len() && (bytes[index].is_ascii_alphanumeric() || bytes[index] == b'_' || bytes[index] == b'.')
    {
        index += 1;
    }
    index
}

struct Parser {
    tokens: Vec<Token>,
    index: usize,
    depth: usize,
    end: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.index)
    }

    fn next(&mut self, expected: &'static str) -> Result<Token, CalcError> {
        let token =
            self.tokens.get(self.index).cloned().ok_or(CalcError::UnexpectedEnd { expected, position: self.end })?;
        self.index += 1;
        Ok(token)
    }

    fn peek_operator(&self) -> Option<(char, usize)> {
        match self.peek() {
            Some(Token { kind: Kind::Operator(op), position, .. }) => Some((*op, *position)),
            _ => None,
        }
    }

    fn enter(&mut self, position: usize) -> Result<(), CalcError> {
        self.depth += 1;
        if self.depth > MAX_NESTING {
            return Err(CalcError::TooDeep { max: MAX_NESTING, position });
        }
        Ok(())
    }

    /// expression := term (('+' | '-') term)*
    fn expression(&mut self) -> Result<f64, CalcError> {
        let mut value = self.term()?;
        while let Some((op @ ('+' | '-'), position)) = self.peek_operator() {
            self.index += 1;
            let right = self.term()?;
            value = if op == '+' { value + right } else { value - right };
            value = check_finite(value, &op.to_string(), position)?;
        }
        Ok(value)
    }

    /// term := unary (('*' | '/' | '%') unary)*
    fn term(&mut self) -> Result<f64, CalcError> {
        let mut value = self.unary()?;
        while let Some((op @ ('*' | '/' | '%'), position)) = self.peek_operator() {
            self.index += 1;
            let right = self.unary()?;
            if op != '*' && right == 0.0 {
                return Err(CalcError::DivisionByZero { position });
            }
            value = match op {
                '*' => value * right,
                '/' => value / right,
                _ => value % right,
            };
            value = check_finite(value, &op.to_string(), position)?;
        }
        Ok(value)
    }

    /// unary := ('+' | '-') unary | power
    fn unary(&mut self) -> Result<f64, CalcError> {
        if let Some((op @ ('+' | '-'), position)) = self.peek_operator() {
            self.index += 1;
            self.enter(position)?;
            let value = self.unary()?;
            self.depth -= 1;
            return Ok(if op == '-' { -value } else { value });
        }
        self.power()
    }

    /// power := primary ('^' unary)?  (right-associative through `unary`)
    fn power(&mut self) -> Result<f64, CalcError> {
        let base = self.primary()?;
        if let Some(('^', position)) = self.peek_operator() {
            self.index += 1;
            self.enter(position)?;
            let exponent = self.unary()?;
            self.depth -= 1;
            return check_finite(base.powf(exponent), "^", position);
        }
        Ok(base)
    }

    /// primary := number | constant | function '(' arguments ')' | '(' expression ')'
    fn primary(&mut self) -> Result<f64, CalcError> {
        let token = self.next("a number, name or `(`")?;
        match &token.kind {
            Kind::Number(value) => Ok(*value),
            Kind::Open => {
                self.enter(token.position)?;
                let value = self.expression()?;
                self.expect_close()?;
                self.depth -= 1;
                Ok(value)
            }
            Kind::Name(name) => {
                if matches!(self.peek(), Some(Token { kind: Kind::Open, .. })) {
                    self.index += 1;
                    self.enter(token.position)?;
                    let arguments = self.arguments()?;
                    self.depth -= 1;
                    call(name, &token, &arguments)
                } else {
                    match name.as_str() {
                        "pi" => Ok(std::f64::consts::PI),
                        "e" => Ok(std::f64::consts::E),
                        _ if is_function(name) => Err(match self.peek() {
                            Some(next) => next.unexpected(),
                            None => CalcError::UnexpectedEnd {
                                expected: "`(` after a function name",
                                position: token.position + token.text.len(),
                            },
                        }),
                        _ => Err(CalcError::UnknownName { name: token.text.clone(), position: token.position }),
                    }
                }
            }
            Kind::Operator(_) | Kind::Close | Kind::Comma => Err(token.unexpected()),
        }
    }

    /// arguments := expression (',' expression)* ')'   (after the opening parenthesis)
    fn arguments(&mut self) -> Result<Vec<f64>, CalcError> {
        let mut arguments = vec![self.expression()?];
        loop {
            let token = self.next("`,` or `)`")?;
            match token.kind {
                Kind::Comma => arguments.push(self.expression()?),
                Kind::Close => return Ok(arguments),
                _ => return Err(token.unexpected()),
            }
        }
    }

    fn expect_close(&mut self) -> Result<(), CalcError> {
        let token = self.next("`)`")?;
        if token.kind == Kind::Close { Ok(()) } else { Err(token.unexpected()) }
    }
}

fn is_function(name: &str) -> bool {
    matches!(
        name,
        "sqrt" | "abs" | "round" | "floor" | "ceil" | "ln" | "log10" | "exp" | "sin" | "cos" | "tan" | "min" | "max"
    )
}

fn call(name: &str, token: &Token, arguments: &[f64]) -> Result<f64, CalcError> {
    let position = token.position;
    let wrong_count = |expected| CalcError::WrongArgumentCount {
        function: name.to_string(),
        expected,
        found: arguments.len(),
        position,
    };
    let value = match name {
        "min" => arguments.iter().copied().reduce(f64::min).ok_or_else(|| wrong_count("at least 1"))?,
        "max" => arguments.iter().copied().reduce(f64::max).ok_or_else(|| wrong_count("at least 1"))?,
        _ => {
            let function: fn(f64) -> f64 = match name {
                "sqrt" => f64::sqrt,
                "abs" => f64::abs,
                "round" => f64::round,
                "floor" => f64::floor,
                "ceil" => f64::ceil,
                "ln" => f64::ln,
                "log10" => f64::log10,
                "exp" => f64::exp,
                "sin" => f64::sin,
                "cos" => f64::cos,
                "tan" => f64::tan,
                _ => return Err(CalcError::UnknownName { name: token.text.clone(), position }),
            };
            let [argument] = arguments else {
                return Err(wrong_count("1"));
            };
            function(*argument)
        }
    };
    check_finite(value, name, position)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn eval(expression: &str) -> f64 {
        evaluate(expression).unwrap_or_else(|error| panic!("{expression}: {error}"))
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12 * b.abs().max(1.0)
    }

    #[test]
    fn respects_precedence_and_associativity() {
        assert_eq!(eval("1 + 2 * 3"), 7.0);
        assert_eq!(eval("(1 + 2) * 3"), 9.0);
        assert_eq!(eval("10 - 4 - 3"), 3.0);
        assert_eq!(eval("2 ^ 3 ^ 2"), 512.0);
        assert_eq!(eval("-2^2"), -4.0);
        assert_eq!(eval("(-2)^2"), 4.0);
        assert_eq!(eval("2^-1"), 0.5);
        assert_eq!(eval("-3 * -2"), 6.0);
        assert_eq!(eval("+5 - -5"), 10.0);
        assert_eq!(eval("7 % 3"), 1.0);
        assert_eq!(eval("7 / 2"), 3.5);
        assert_eq!(eval("2 * 3 ^ 2"), 18.0);
    }

    #[test]
    fn parses_number_forms() {
        assert_eq!(eval("1.5e3"), 1500.0);
        assert_eq!(eval("2E-2"), 0.02);
        assert_eq!(eval(".5 + 1."), 1.5);
        assert_eq!(eval("  42  "), 42.0);
    }

    #[test]
    fn evaluates_functions_and_constants() {
        assert_eq!(eval("sqrt(16)"), 4.0);
        assert_eq!(eval("abs(-3)"), 3.0);
        assert_eq!(eval("round(2.5)"), 3.0);
        assert_eq!(eval("floor(-1.5)"), -2.0);
        assert_eq!(eval("ceil(1.2)"), 2.0);
        assert!(close(eval("ln(e)"), 1.0));
        assert_eq!(eval("log10(1000)"), 3.0);
        assert!(close(eval("exp(1)"), std::f64::consts::E));
        assert!(close(eval("sin(pi / 2)"), 1.0));
        assert!(close(eval("cos(0)"), 1.0));
        assert!(close(eval("tan(0)"), 0.0));
        assert_eq!(eval("min(3, 1, 2)"), 1.0);
        assert_eq!(eval("max(3, 1 + 9, 2)"), 10.0);
        assert_eq!(eval("max(4)"), 4.0);
        assert!(close(eval("2 * PI"), std::f64::consts::TAU));
        assert_eq!(eval("Sqrt(max(9, 4))"), 3.0);
    }

    #[test]
    fn reports_unexpected_token_with_position() {
        let error = evaluate("(1 + 2))").unwrap_err();
        assert_eq!(error, CalcError::UnexpectedToken { token: ")".into(), position: 7 });
        assert_eq!(error.to_string(), "unexpected `)` at position 7");
        assert_eq!(evaluate("1 + * 2").unwrap_err(), CalcError::UnexpectedToken { token: "*".into(), position: 4 });
        assert_eq!(evaluate("2 pi").unwrap_err(), CalcError::UnexpectedToken { token: "pi".into(), position: 2 });
    }

    #[test]
    fn rejects_thousands_separators() {
        assert!(matches!(evaluate("1_000").unwrap_err(), CalcError::InvalidNumber { position: 0, .. }));
        assert_eq!(evaluate("1,000 + 1").unwrap_err(), CalcError::UnexpectedToken { token: ",".into(), position: 1 });
        assert!(matches!(evaluate("1.2.3").unwrap_err(), CalcError::InvalidNumber { .. }));
        assert!(matches!(evaluate("2pi").unwrap_err(), CalcError::InvalidNumber { .. }));
        assert!(matches!(evaluate("1e999").unwrap_err(), CalcError::InvalidNumber { .. }));
    }

    #[test]
    fn reports_incomplete_and_unknown_input() {
        assert_eq!(
            evaluate("2 +").unwrap_err(),
            CalcError::UnexpectedEnd { expected: "a number, name or `(`", position: 3 }
        );
        assert!(matches!(evaluate("(1 + 2").unwrap_err(), CalcError::UnexpectedEnd { position: 6, .. }));
        assert!(matches!(evaluate("").unwrap_err(), CalcError::Empty));
        assert!(matches!(evaluate("   ").unwrap_err(), CalcError::Empty));
        assert_eq!(evaluate("x + 1").unwrap_err(), CalcError::UnknownName { name: "x".into(), position: 0 });
        assert!(matches!(evaluate("log(2)").unwrap_err(), CalcError::UnknownName { .. }));
        assert_eq!(evaluate("1 $ 2").unwrap_err(), CalcError::UnexpectedCharacter { character: '$', position: 2 });
        assert!(matches!(evaluate("sqrt 4").unwrap_err(), CalcError::UnexpectedToken { position: 5, .. }));
        assert!(matches!(
            evaluate("sqrt(1, 2)").unwrap_err(),
            CalcError::WrongArgumentCount { found: 2, position: 0, .. }
        ));
        assert!(matches!(evaluate("max()").unwrap_err(), CalcError::UnexpectedToken { .. }));
    }

    #[test]
    fn rejects_division_by_zero_and_non_finite_results() {
        assert_eq!(evaluate("1 / (2 - 2)").unwrap_err(), CalcError::DivisionByZero { position: 2 });
        assert_eq!(evaluate("5 % 0").unwrap_err(), CalcError::DivisionByZero { position: 2 });
        assert!(matches!(evaluate("sqrt(-1)").unwrap_err(), CalcError::NotFinite { position: 0, .. }));
        assert!(matches!(evaluate("ln(0)").unwrap_err(), CalcError::NotFinite { .. }));
        assert!(matches!(evaluate("10 ^ 400").unwrap_err(), CalcError::NotFinite { position: 3, .. }));
        assert!(matches!(evaluate("1e308 * 10").unwrap_err(), CalcError::NotFinite { .. }));
    }

    #[test]
    fn enforces_length_and_nesting_limits() {
        let long = "1+".repeat(500) + "1";
        assert!(matches!(evaluate(&long).unwrap_err(), CalcError::TooLong { .. }));
        let ok = format!("{}1{}", "(".repeat(MAX_NESTING), ")".repeat(MAX_NESTING));
        assert_eq!(eval(&ok), 1.0);
        let deep = format!("{}1{}", "(".repeat(MAX_NESTING + 1), ")".repeat(MAX_NESTING + 1));
        assert!(matches!(evaluate(&deep).unwrap_err(), CalcError::TooDeep { .. }));
        let signs = "-".repeat(MAX_NESTING + 1) + "1";
        assert!(matches!(evaluate(&signs).unwrap_err(), CalcError::TooDeep { .. }));
        let powers = "2^".repeat(MAX_NESTING + 1) + "1";
        assert!(matches!(evaluate(&powers).unwrap_err(), CalcError::TooDeep { .. }));
    }

    #[test]
    fn formats_numbers_for_humans() {
        assert_eq!(format_number(3.0), "3");
        assert_eq!(format_number(-42.0), "-42");
        assert_eq!(format_number(-0.0), "0");
        assert_eq!(format_number(0.1 + 0.2), "0.3");
        assert_eq!(format_number(1.0 / 3.0), "0.333333333333");
        assert_eq!(format_number(2.5), "2.5");
        assert_eq!(format_number(123456.789), "123456.789");
        assert_eq!(format_number(9007199254740991.0), "9007199254740991");
        assert_eq!(format_number(1e20), "1e20");
        assert_eq!(format_number(1.5e-9), "1.5e-9");
        assert_eq!(format_number(std::f64::consts::PI), "3.14159265359");
        assert_eq!(format_number(f64::NAN), "NaN");
        assert_eq!(format_number(f64::NEG_INFINITY), "-inf");
    }
}
